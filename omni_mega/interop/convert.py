"""`import_hf` (Hugging Face folder -> our checkpoint + model YAML) and `export_hf` (our checkpoint -> Hugging Face
folder), streaming: tensors are read, transformed and written one mapping row at a time (`interop.arch` tables,
`interop.dcp` writer/reader), so memory stays near one shard's mapping plus one layer's tensors; no model is built.

An imported checkpoint is laid out like a trainer checkpoint (`training.checkpoint`): `dist/` (megatron
dist_checkpointing, one key per layer, global tensors: loads at any TP/PP), `trainer_state.json` (step 0 and the
model config, so `init_from` and `--resume`'s shape checks read it), `COMPLETE`, plus `interop.json` (the source
folder, its architecture and config.json, the tokenizer folder when the source has one, the stored dtype).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from omni_mega.config import ModelConfig, from_dict, to_dict
from omni_mega.interop import arch as A
from omni_mega.interop.dcp import TensorReader, write_tensors
from omni_mega.interop.errors import InteropError
from omni_mega.interop.hf_io import HFCheckpoint, ShardWriter
from omni_mega.runtime.manifest import MARKER, write_manifest

log = logging.getLogger(__name__)
INTEROP = "interop.json"
STATE = "trainer_state.json"
# Tensors a Hugging Face folder may hold that carry no weights (buffers some releases saved).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _padded(vocab: int) -> int:
    return A.padded_vocab(vocab, 1)


def _mappings(fam: A.Family, cfg: ModelConfig, padded: int, present: set[str] | None) -> list[A.Mapping]:
    """Every mapping row of the model; on import (`present` = the HF names) each stack uses the first HF prefix
    whose first tensor exists."""
    out = []
    for stack in fam.stacks(cfg, padded):
        prefix = stack.hf_prefixes[0]
        if present is not None:
            first = A.expand(stack, prefix)[0].hf[0]
            for cand in stack.hf_prefixes:
                if A.expand(stack, cand)[0].hf[0] in present:
                    prefix = cand
                    break
            else:
                raise InteropError(f"no tensor {first!r} (nor under {', '.join(stack.hf_prefixes[1:]) or 'any other'} "
                                   "prefix): the weights do not match config.json's architecture")
        out += A.expand(stack, prefix)
    return out


def _check(ck: HFCheckpoint, rows: list[A.Mapping], tied: bool, ignored: tuple[str, ...] = ()) -> None:
    """Config vs weights: every tensor the config implies exists with the implied shape, and nothing else is there."""
    used = set()
    for r in rows:
        for name, want in zip(r.hf, r.shapes):
            if name not in ck.shards:
                raise InteropError(f"config.json and weights disagree: no tensor {name!r} (needed for {r.mcore})")
            if ck.shape(name) != want:
                raise InteropError(f"config.json and weights disagree: {name} has shape {list(ck.shape(name))}, the "
                                   f"config implies {list(want)}")
            used.add(name)
    extra = sorted(n for n in ck.names() if n not in used and not n.endswith(IGNORED_SUFFIXES)
                   and not n.startswith(ignored)
                   and not (tied and n == "lm_head.weight"))  # some tied checkpoints still store it
    if extra:
        raise InteropError(f"config.json and weights disagree: {len(extra)} tensor(s) the config does not describe, "
                           f"e.g. {', '.join(extra[:3])}")


def import_hf(hf_dir: str | Path, out: str | Path, *, config_out: str | Path | None = None,
              dtype: str | None = None, overwrite: bool = False) -> dict:
    """Converts a Hugging Face model folder into an omni_mega checkpoint dir. Returns a summary dict."""
    t0 = time.perf_counter()
    ck = HFCheckpoint(hf_dir)
    fam = A.family_of(ck.config)
    try:
        cfg = fam.to_config(ck.config)
    except (ValueError, TypeError, KeyError) as e:
        raise InteropError(f"{ck.dir / 'config.json'}: {e}") from None
    padded = None if fam.vision_only else _padded(cfg.llm.vocab_size)
    rows = _mappings(fam, cfg, padded, set(ck.names()))
    _check(ck, rows, tied=not cfg.llm.untie_embeddings, ignored=fam.ignored_prefixes)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InteropError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cast = DTYPES[dtype] if dtype else None
    specs = {}
    nbytes = 0
    for r in rows:
        shape = tuple(r.transform.to_mcore(*[torch.empty(s, device="meta") for s in r.shapes]).shape)
        dt = cast or ck.dtype(r.hf[0])
        nbytes += int(torch.Size(shape).numel()) * dt.itemsize
        if r.transform.to_mcore_rows is not None:  # stored as row blocks: no concatenated copy
            blocks = r.transform.to_mcore_rows(*[torch.empty(s, device="meta") for s in r.shapes])
            specs[r.mcore] = (shape, dt, [(row, b.shape[0], lambda r=r, i=i: r.transform.to_mcore_rows(
                *[ck.get(n) for n in r.hf])[i][1]) for i, (row, b) in enumerate(blocks)])
        else:
            specs[r.mcore] = (shape, dt, lambda r=r: r.transform.to_mcore(*[ck.get(n) for n in r.hf]))
    digests = write_tensors(tmp / "dist", specs)
    ck.close()
    state = {"step": 0, "stage_index": 0, "stage_name": "import-hf", "save": "full", "model": to_dict(cfg),
             "parallel": {"tp": 1, "pp": 1}, "world_size": 1}
    (tmp / STATE).write_text(json.dumps(state, indent=1, sort_keys=True))
    has_tok = any((ck.dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model"))
    tok = str(ck.dir.resolve()) if has_tok else None
    meta = {"format": 1, "source": str(ck.dir.resolve()), "architecture": fam.architecture, "hf_config": ck.config,
            "tokenizer": tok, "dtype": _dtype_name(next(iter(specs.values()))[1]), "vocab_size": cfg.llm.vocab_size,
            "padded_vocab_size": padded}
    (tmp / INTEROP).write_text(json.dumps(meta, indent=1))
    write_manifest(tmp, digests)  # verified like a trainer checkpoint wherever one is loaded (resume, init_from, eval)
    (tmp / MARKER).write_text(json.dumps({"step": 0}))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    if config_out is not None:
        write_model_yaml(cfg, config_out, source=str(ck.dir), ckpt=str(out), tokenizer=tok)
    dt = time.perf_counter() - t0
    notes = []
    text = A.text_fields(ck.config)
    window = text.get("sliding_window") if text.get("use_sliding_window", True) else None
    if window and cfg.llm.max_position_embeddings > int(window):
        notes.append(f"sliding_window={window} is not modelled: attention is full, so sequences longer than "
                     f"{window} tokens differ from the original")
    return {"architecture": fam.architecture, "tensors": len(specs), "bytes": nbytes, "seconds": dt,
            "config": cfg, "out": str(out), "notes": notes}


def write_model_yaml(cfg: ModelConfig, path: str | Path, *, source: str, ckpt: str, tokenizer: str | None) -> None:
    import yaml

    body = yaml.safe_dump({"model": to_dict(cfg)}, sort_keys=False)
    head = (f"# model of {source}, imported by `omni-mega import-hf` into {ckpt}\n"
            f"# start a stage from it with `init_from: {ckpt}` (or `init_from: hf:{source}`)"
            + (f"\n# tokenizer: {tokenizer}" if tokenizer else "") + "\n")
    Path(path).write_text(head + body)


# ---- our checkpoints --------------------------------------------------------------------------------------------------
def resolve_step_dir(path: str | Path) -> Path:
    """A checkpoint dir (with COMPLETE) as given; a run dir or its ckpt/ dir -> the `latest` (else newest) complete
    step dir."""
    p = Path(path)
    if not p.exists():
        raise InteropError(f"{p}: no such checkpoint or run dir")
    if (p / MARKER).exists():
        return p
    root = p if p.name == "ckpt" else p / "ckpt"
    latest = root / "latest"
    if latest.is_file() and (root / latest.read_text().strip() / MARKER).exists():
        return root / latest.read_text().strip()
    steps = sorted((d for d in root.glob("step_*") if (d / MARKER).exists()), reverse=True) if root.is_dir() else []
    if not steps:
        raise InteropError(f"{p}: no complete checkpoint (a dir with a {MARKER} marker, or a run dir holding one)")
    return steps[0]


def read_checkpoint_info(step: str | Path) -> tuple[ModelConfig, dict]:
    """(model config, interop.json or {}) of a checkpoint dir."""
    step = Path(step)
    try:
        state = json.loads((step / STATE).read_text())
        cfg = from_dict(ModelConfig, state["model"], "model")
    except (OSError, ValueError, KeyError) as e:
        raise InteropError(f"{step / STATE}: cannot read the model config ({e})") from None
    meta = json.loads((step / INTEROP).read_text()) if (step / INTEROP).is_file() else {}
    return cfg, meta


def _hf_tensors(reader: TensorReader, r: A.Mapping) -> list[tuple[str, torch.Tensor]]:
    """The HF tensors of one mapping row. A transform whose megatron tensor is the HF tensors as row blocks (fc1's
    [gate; up]) reads each block as stored, without assembling the whole tensor to split it again."""
    if r.transform.to_mcore_rows is not None:
        shape, dtype = reader.meta[r.mcore]
        outs = r.transform.to_hf(torch.empty(shape, dtype=dtype, device="meta"))
        blocks = r.transform.to_mcore_rows(*outs)
        stored = reader.row_chunks(r.mcore)
        if len(blocks) == len(outs) and all(b.shape == o.shape and (row, b.shape[0]) in stored
                                            for (row, b), o in zip(blocks, outs)):
            return [(name, stored[(row, b.shape[0])]()) for name, (row, b) in zip(r.hf, blocks)]
    return list(zip(r.hf, r.transform.to_hf(reader.read(r.mcore))))


def export_hf(ckpt: str | Path, out: str | Path, *, tokenizer: str | Path | None = None, dtype: str | None = None,
              max_shard_bytes: int = 2 * 2**30, overwrite: bool = False) -> dict:
    """Writes a Hugging Face folder (config.json, safetensors shards, tokenizer files) for an omni_mega checkpoint
    (an imported one or a trainer's step/run dir; any TP/PP layout wrote it). Returns a summary dict."""
    t0 = time.perf_counter()
    step = resolve_step_dir(ckpt)
    cfg, meta = read_checkpoint_info(step)
    dist = step / "dist"
    reader = TensorReader(dist, mmap=True)
    fam = A.FAMILIES[meta["architecture"]] if meta.get("architecture") in A.FAMILIES else A.family_for(cfg)
    padded = None
    if not fam.vision_only:
        emb_key = ("llm." if cfg.vit is not None else "") + "embedding.word_embeddings.weight"
        if emb_key not in reader:
            raise InteropError(f"{dist}: no {emb_key} (not a language-model checkpoint of this model config)")
        padded = reader.meta[emb_key][0][0]
        if cfg.llm.vocab_size is None:  # trained on a data-defined vocabulary: the padded rows are all we know
            cfg.llm.vocab_size = padded
    rows = _mappings(fam, cfg, padded, None)
    missing = [r.mcore for r in rows if r.mcore not in reader]
    if missing:
        raise InteropError(f"{step}: the checkpoint lacks {len(missing)} tensor(s), e.g. {missing[0]} (a "
                           "`save: trainable_only` checkpoint? export a full one)")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InteropError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cast = DTYPES[dtype] if dtype else None
    plan = []  # (HF name, dtype, shape) in write order, from the stored shapes through the transforms on meta
    for r in rows:
        shape, stored = reader.meta[r.mcore]
        outs = r.transform.to_hf(torch.empty(shape, dtype=stored, device="meta"))
        plan += [(name, cast or stored, tuple(x.shape)) for name, x in zip(r.hf, outs)]
    store_dtype = plan[0][1]
    writer = ShardWriter(tmp, plan, max_shard_bytes)
    for r in rows:
        for name, x in _hf_tensors(reader, r):
            writer.add(name, x.to(cast) if cast else x)
    files = writer.close()
    hf_cfg = fam.to_hf_config(cfg, cfg.llm.vocab_size, _dtype_name(store_dtype), meta.get("hf_config"))
    (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True))
    tok = Path(tokenizer) if tokenizer else (Path(meta["tokenizer"]) if meta.get("tokenizer") else None)
    copied = []
    if tok is not None:
        if not tok.is_dir():
            raise InteropError(f"--tokenizer {tok}: no such directory")
        from omni_mega.interop.hf_io import TOKENIZER_FILES

        for n in TOKENIZER_FILES:
            if (tok / n).is_file():
                shutil.copy2(tok / n, tmp / n)
                copied.append(n)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return {"architecture": fam.architecture, "files": files, "bytes": writer.total, "tokenizer_files": copied,
            "seconds": time.perf_counter() - t0, "step_dir": str(step), "out": str(out)}
