"""Conversations (JSONL) -> conversation shards, for supervised fine-tuning, preference pairs and prompts with answers.

`tools/preprocess_conversations.py` is the command line. Each record is parsed (`messages`), rendered with a chat
template (`templates`: token ids, the loss mask on assistant content and its end-of-turn, one IMAGE_MARK per image),
and its images are read from disk (paths relative to the JSONL file) and checked by decoding them once with the
training decoder; the image bytes are stored as given. Bad records never stop the run and never shift other
samples: each is counted by reason with its line (`file.jsonl:7`), and the report goes into dataset.json.

Over-long conversations: `--max-tokens` drops (and counts as `too_long`) records whose rendered text is longer,
images counted as one token each; the packer later skips, and counts, a sample whose images at the stage's
resolution make it longer than a pack. A conversation is never truncated: a cut answer would teach the model to
stop in mid-sentence, and a cut prompt would supervise answers to questions it never saw.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image as PILImage

from omni_mega.data.conversations import messages as M
from omni_mega.data.conversations.shards import ConvShardWriter, Sequence
from omni_mega.data.conversations.templates import (TEMPLATES, ByteChatTokenizer, HFChatTokenizer, chat_identity,
                                                     render)
from omni_mega.data.multimodal.preprocess import BadInput, _Progress
from omni_mega.data.text import outputs
from omni_mega.data.tool_cli import add_tokenizer_args, run_tool

TOO_LONG, MISSING_IMAGE, BAD_IMAGE, MALFORMED = "too_long", "missing_image", "bad_image", "malformed_json"
CHUNK = 64  # records handed to the thread pool at a time (keeps output order without holding the whole input)


def read_records(path: str):
    """(where, record or None, reason) per line of a JSONL file (.gz too)."""
    with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
        for n, raw in enumerate(f, 1):
            where = f"{os.path.basename(path)}:{n}"
            if not raw.strip():
                continue
            try:
                yield where, json.loads(raw.decode("utf-8")), None
            except (UnicodeDecodeError, ValueError):
                yield where, None, MALFORMED


class Converter:
    """Turns one record into a sample (sequences, images, meta) or a (reason, detail) rejection."""

    def __init__(self, kind: str, template: str, tok, base_dir: str, max_tokens: int | None,
                 chat_template: str | None = None) -> None:
        self.kind, self.template, self.tok, self.base = kind, template, tok, base_dir
        self.max_tokens, self.chat_template = max_tokens, chat_template

    def _render(self, msgs, generation_prompt=False):
        return render(msgs, self.template, self.tok, generation_prompt=generation_prompt,
                      chat_template=self.chat_template)

    def _sequences(self, rec) -> tuple[list[Sequence], list[M.Image], dict]:
        if self.kind == "sft":
            r = self._render(M.parse_sft(rec))
            return [Sequence(r.ids, r.mask)], r.images, {}
        if self.kind == "preference":
            prompt, chosen, rejected = M.parse_preference(rec)
            seqs, images = [], None
            for reply in (chosen, rejected):
                r = self._render(prompt + reply)
                prefix = len(self._render(prompt, generation_prompt=True).ids)
                r.mask[:prefix] = 0  # only the reply is scored (a system or earlier assistant turn is context)
                seqs.append(Sequence(r.ids, r.mask))
                images = r.images
            return seqs, images, {}
        msgs, answer = M.parse_prompt(rec)
        r = self._render(msgs, generation_prompt=True)
        return [Sequence(r.ids, r.mask * 0)], r.images, {"answer": answer}

    def __call__(self, item):
        where, rec, reason = item
        if rec is None:
            return where, reason, "not UTF-8 JSON"
        try:
            seqs, images, meta = self._sequences(rec)
        except M.BadRecord as e:
            return where, e.reason, e.detail
        longest = max(len(s.ids) for s in seqs)
        if self.max_tokens and longest > self.max_tokens:
            return where, TOO_LONG, f"{longest} tokens > --max-tokens {self.max_tokens}"
        loaded = []
        for img in images:
            got = self._image(img.path)
            if isinstance(got, tuple) and isinstance(got[0], str):
                return where, got[0], got[1]
            loaded.append(got)
        return {"where": where, "sequences": seqs, "images": loaded, "meta": {"source": where, **meta}}

    def _image(self, rel: str):
        from omni_mega.data.images import decode_one

        path = rel if os.path.isabs(rel) else os.path.join(self.base, rel)
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            return MISSING_IMAGE, f"{rel}: {e.strerror or e}"
        d = decode_one(data)  # the training decoder: what trains is what was checked
        if d.error is not None:
            return BAD_IMAGE, f"{rel}: {d.error}"
        with PILImage.open(io.BytesIO(data)) as im:  # the stored size is the original one (header only)
            w, h = im.size
        return data, h, w


def chat_tokenizer(args):
    if args.tokenizer_type == "byte":
        return ByteChatTokenizer(), None
    from omni_mega.data.text.tokenizer import build_tokenizer

    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=args.tokenizer_model)
    template = None
    config = Path(args.tokenizer_model)
    config = (config if config.is_dir() else config.parent) / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    return HFChatTokenizer(tok), template


DATASET_FILE = re.compile(r"^(dataset\.json|shard-\d+\.(tar|idx\.npz))$")


def run(args) -> dict:
    """Preprocesses per `args`. The dataset is built next to --output-dir and swapped in only when complete and
    non-empty (`data.text.outputs`); an existing dataset survives a run that keeps nothing or is killed."""
    tok, chat_template = chat_tokenizer(args)
    if args.chat_template == "jinja" and not chat_template:
        raise ValueError(f"--chat-template jinja: {args.tokenizer_model} has no chat_template in tokenizer_config.json")
    if not os.path.isfile(args.input):
        raise ValueError(f"--input {args.input!r}: no such JSONL file")
    out_dir = os.path.abspath(args.output_dir)
    try:
        parent = outputs.prepare_dataset_dir(out_dir, "--output-dir", DATASET_FILE)
    except outputs.OutputError as e:
        raise ValueError(str(e)) from None
    for stale in outputs.remove_stale(parent, os.path.basename(out_dir)):
        print(f"removed stale temporary {stale}", file=sys.stderr)
    tmp_dir = out_dir + outputs.tmp_suffix()
    try:
        summary = _write(args, tok, chat_template, tmp_dir)
        outputs.replace_dir(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return summary


def _write(args, tok, chat_template, out_dir: str) -> dict:
    convert = Converter(args.kind, args.chat_template, tok, os.path.dirname(os.path.abspath(args.input)),
                        args.max_tokens, chat_template)
    bad, progress, stats = BadInput(), _Progress(args.log_interval), {"supervised_tokens": 0, "tokens": 0}
    identity = chat_identity(tok, args.chat_template)
    with ConvShardWriter(out_dir, args.kind, identity, shard_size=args.shard_size) as writer, \
            ThreadPoolExecutor(max(1, args.workers)) as pool:
        records = read_records(args.input)
        while chunk := [r for _, r in zip(range(CHUNK), records)]:
            for r in pool.map(convert, chunk):
                if isinstance(r, tuple):
                    bad.add(r[1], r[0])
                    progress.update(0)
                    continue
                writer.add(r["sequences"], r["images"], r["meta"])
                stats["tokens"] += sum(len(s.ids) for s in r["sequences"])
                stats["supervised_tokens"] += sum(int(s.mask.sum()) for s in r["sequences"])
                progress.update(sum(len(d) for d, _, _ in r["images"]))
        if writer.count == 0:
            raise ValueError(f"no record of {args.input} could be used ({progress.seen} read):\n{bad.report()}")
        writer.finish(bad_input={"counts": dict(bad.counts), "first": bad.first}, input=args.input,
                      input_samples=progress.seen, stats=stats)
    print(f"Done: {writer.count} of {progress.seen} {args.kind} records written to {args.output_dir} "
          f"({progress.rates()}); {stats['supervised_tokens']:,} of {stats['tokens']:,} tokens supervised.",
          file=sys.stderr)
    print(f"Bad input (skipped):\n{bad.report()}" if bad.counts else "Bad input: none", file=sys.stderr)
    return {"samples": writer.count, "seen": progress.seen, "bad": dict(bad.counts), "bad_first": bad.first,
            "output_dir": str(args.output_dir), **stats}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="JSONL file (.gz too)")
    p.add_argument("--kind", default="sft", choices=["sft", "preference", "prompts"],
                   help="sft: conversations; preference: {prompt, chosen, rejected}; prompts: {messages, answer}")
    p.add_argument("--chat-template", default="chatml", choices=TEMPLATES)
    add_tokenizer_args(p, ("byte", "HuggingFaceTokenizer"))
    p.add_argument("--max-tokens", type=int, default=None, help="drop (and count) longer records")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2, help="threads reading and checking images")
    p.add_argument("--log-interval", type=int, default=1000)
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_tool(run, args, "preprocess_conversations.py")
