"""`omni-mega` command line: train (with --resume), demo, report, verify-ckpt, import-hf, export-hf, generate,
--version. Also `python -m omni_mega`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import omni_mega

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"
DEMO_CONFIG = "tiny_omni.yaml"


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default=None, help="where metrics, TensorBoard logs and checkpoints go (default runs/<name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set parallel.tp=2 --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="load and validate the config, print the plan, do not train")
    p.add_argument("--resume", default=None, metavar="auto|CKPT",
                   help="auto: continue from the newest complete checkpoint in the run dir (from scratch if none); "
                        "or a checkpoint dir")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run dir that holds a run: the old run is moved aside to "
                        "<run dir>.prev-<time> (never deleted)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omni-mega", description=omni_mega.__doc__)
    parser.add_argument("--version", action="version", version=f"omni_mega {omni_mega.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train from a YAML run config (launch with torchrun/srun for several ranks)")
    train.add_argument("config", help="path to a run config YAML (see examples/configs)")
    _add_train_args(train)
    train.add_argument("--stage", default=None, metavar="JOB",
                       help="a stage graph (stages with `job:`): run only this job (or the job of this stage) in "
                            "<run dir>/JOB; without it every job runs in dependency order")
    layout = train.add_argument_group("--dry-run layout (plan for a cluster that is not this machine)")
    layout.add_argument("--world-size", type=int, default=None, metavar="N", help="GPUs in the job")
    layout.add_argument("--nodes", type=int, default=None, metavar="N", help="nodes (with --gpus-per-node)")
    layout.add_argument("--gpus-per-node", type=int, default=8, metavar="G", help="GPUs per node (default 8)")
    demo = sub.add_parser("demo", help="the embedded default run on the built-in data")
    _add_train_args(demo)
    demo.add_argument("--audio", action="store_true",
                      help="the μOmni curriculum instead (examples/configs/muomni_5stage.yaml: Thinker, ASR audio "
                           "encoder, vision encoder, codec + Talker, then omni SFT) on built-in synthetic speech")
    report = sub.add_parser("report", help="write report.png (loss and LR, stage boundaries) and report.md of a run")
    report.add_argument("run_dir", help="a run dir with metrics.jsonl")
    verify = sub.add_parser("verify-ckpt", help="check checkpoints against their manifests (exit 0 intact, 1 corrupt, "
                                                "2 bad path)")
    verify.add_argument("dir", help="a checkpoint step dir, or a run dir / ckpt dir (all its step dirs, newest first)")
    _add_interop_parsers(sub)
    ev = sub.add_parser("eval", help="answer held-out conversations greedily and score exact match (eval.json and "
                                     "eval.md)")
    ev.add_argument("ckpt", help="a checkpoint dir (trainer step dir or import-hf output) or a run dir")
    ev.add_argument("--data", required=True, help="conversations: a JSONL file (preprocessed on the fly with the "
                                                  "chat template and tokenizer given) or a conversation shard dir")
    ev.add_argument("--chat-template", default="chatml", choices=["chatml", "llama3", "jinja"])
    ev.add_argument("--tokenizer-model", default=None, help="a tokenizer.json (or its folder) for a JSONL --data; "
                                                            "default: the built-in byte tokenizer")
    ev.add_argument("--samples", type=int, default=None, help="answer only the first N conversations")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--min-pixels", type=int, default=56 * 56)
    ev.add_argument("--max-pixels", type=int, default=28 * 28 * 1280)
    ev.add_argument("--out", default=None, help="where eval.json / eval.md go (default: the checkpoint dir)")
    return parser


def cmd_eval(args) -> int:
    """Exact-match evaluation of a checkpoint on held-out conversations (`training.evaluate`)."""
    import tempfile

    from omni_mega.interop import InteropError

    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(args.data)
            if data.is_file():  # JSONL: the conversation tool renders it first
                from omni_mega.data.conversations.preprocess import main as preprocess

                extra = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", args.tokenizer_model] \
                    if args.tokenizer_model else []
                preprocess(["--input", str(data), "--output-dir", f"{tmp}/ds", "--chat-template",
                            args.chat_template, "--log-interval", "1000000", *extra])
                data = Path(tmp) / "ds"
            from omni_mega.data.conversations.shards import ConvShardDataset
            from omni_mega.training.evaluate import answer_dataset, write_eval
            from omni_mega.training.serving import load_for_inference

            ds = ConvShardDataset(data)
            loaded = load_for_inference(args.ckpt)
            n = len(ds) if args.samples is None else min(args.samples, len(ds))
            rows = answer_dataset(loaded.model, loaded.cfg, ds, list(range(n)), min_pixels=args.min_pixels,
                                  max_pixels=args.max_pixels, vocab_size=int(ds.tokenizer["vocab_size"]),
                                  max_new_tokens=args.max_new_tokens)
    except (InteropError, ValueError, FileNotFoundError) as e:
        print(f"omni-mega: eval: {e}", file=sys.stderr)
        return 2
    if loaded.rank0:
        js, md = write_eval(rows, Path(args.out or loaded.step_dir))
        acc = sum(r["exact"] for r in rows) / max(len(rows), 1)
        print(f"exact match {acc:.1%} of {len(rows)} conversations: {js}, {md}")
    from omni_mega.runtime import shutdown

    shutdown()
    return 0


def cmd_verify_ckpt(path: str) -> int:
    """One line per step dir: OK, or its problems. Reads every byte of every checkpoint."""
    from omni_mega.runtime.manifest import step_dirs, verify_checkpoint

    try:
        dirs = step_dirs(path)
    except FileNotFoundError as e:
        print(f"omni-mega: verify-ckpt: {e}", file=sys.stderr)
        return 2
    bad = 0
    for d in dirs:
        problems = verify_checkpoint(d)
        bad += bool(problems)
        print(f"{d}: " + ("OK" if not problems else "CORRUPT: " + "; ".join(problems)))
    return 1 if bad else 0


def _add_interop_parsers(sub) -> None:
    imp = sub.add_parser("import-hf", help="convert a Hugging Face model folder (config.json + safetensors) into an "
                                           "omni_mega checkpoint that loads at any TP/PP")
    imp.add_argument("hf_dir", help="a local Hugging Face model folder")
    imp.add_argument("--out", required=True, help="the checkpoint dir to write")
    imp.add_argument("--config-out", default=None, metavar="RUN.yaml", help="also write the matching model: YAML")
    imp.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                     help="store the weights in this dtype (default: as in the safetensors files)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    exp = sub.add_parser("export-hf", help="write a Hugging Face folder (config.json + sharded safetensors) for an "
                                           "omni_mega checkpoint, a step dir or a run dir")
    exp.add_argument("ckpt", help="a checkpoint dir (import-hf output or a trainer step dir) or a run dir")
    exp.add_argument("--out", required=True, help="the Hugging Face folder to write")
    exp.add_argument("--tokenizer", default=None, help="copy the tokenizer files of this folder (default: the one "
                                                       "recorded at import, if any)")
    exp.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                     help="write the weights in this dtype (default: as stored)")
    exp.add_argument("--max-shard-size", type=float, default=2.0, metavar="GB", help="safetensors shard size (GB)")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    gen = sub.add_parser("generate", help="generate text from a checkpoint (KV cache; torchrun for tensor "
                                          "parallelism: TP = the number of processes)")
    gen.add_argument("ckpt", help="a checkpoint dir (import-hf output or a trainer step dir) or a run dir")
    gen.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable; needs a tokenizer)")
    gen.add_argument("--prompt-ids", action="append", default=[], metavar="1,2,3", help="prompt token ids (repeatable)")
    gen.add_argument("--image", action="append", default=[], metavar="PATH",
                     help="an image placed before the text of every prompt (repeatable; vision models)")
    gen.add_argument("--tokenizer", default=None, help="a folder with tokenizer.json (default: the one recorded in "
                                                       "the checkpoint)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--eos-id", type=int, action="append", default=None,
                     help="stop at this token (repeatable; default: the model config's eos_token_id)")
    gen.add_argument("--json", action="store_true",
                     help='one JSON line per prompt: {"prompt_ids", "ids" (generated only), "text"}')


def cmd_import_hf(args) -> int:
    from omni_mega.interop import InteropError, import_hf

    try:
        r = import_hf(args.hf_dir, args.out, config_out=args.config_out, dtype=args.dtype, overwrite=args.overwrite)
    except InteropError as e:
        print(f"omni-mega: import-hf: {e}", file=sys.stderr)
        return 2
    print(f"imported {r['architecture']} from {args.hf_dir}: {r['tensors']} tensors, {r['bytes'] / 2**20:.1f} MiB in "
          f"{r['seconds']:.1f} s -> {r['out']}" + (f" (model YAML: {args.config_out})" if args.config_out else ""))
    for note in r["notes"]:
        print(f"note: {note}")
    return 0


def cmd_export_hf(args) -> int:
    from omni_mega.interop import InteropError, export_hf

    try:
        r = export_hf(args.ckpt, args.out, tokenizer=args.tokenizer, dtype=args.dtype,
                      max_shard_bytes=int(args.max_shard_size * 2**30), overwrite=args.overwrite)
    except InteropError as e:
        print(f"omni-mega: export-hf: {e}", file=sys.stderr)
        return 2
    print(f"exported {r['step_dir']} as {r['architecture']}: {len(r['files'])} safetensors file(s), "
          f"{r['bytes'] / 2**20:.1f} MiB in {r['seconds']:.1f} s"
          + (f", tokenizer files {', '.join(r['tokenizer_files'])}" if r["tokenizer_files"] else "") + f" -> {r['out']}")
    return 0


def cmd_generate(args) -> int:
    """Generation from a checkpoint under any TP (the processes torchrun starts); rank 0 prints."""
    from omni_mega.interop import InteropError

    try:
        job = _generation_job(args)
    except (InteropError, ValueError, FileNotFoundError) as e:
        print(f"omni-mega: generate: {e}", file=sys.stderr)
        return 2
    from omni_mega.inference import Generator
    from omni_mega.runtime import shutdown

    gen = Generator(job["model"], job["vocab"])
    for ids in job["prompts"]:
        res = gen.generate(ids, job["params"], pixel_values=job["pixel_values"], grid_thw=job["grid_thw"])
        text = job["tokenizer"].detokenize(res.ids) if job["tokenizer"] is not None else None
        if job["rank0"]:
            if args.json:
                print(json.dumps({"prompt_ids": res.prompt_ids, "ids": res.ids, "text": text}), flush=True)
            else:
                print(text if text is not None else " ".join(map(str, res.ids)), flush=True)
    shutdown()
    return 0


def _generation_job(args) -> dict:
    """Builds the model at TP = world size (pp = 1), loads the checkpoint, and prepares tokenizer, prompts, images."""
    import torch

    from omni_mega.config import ConnectorConfig, ParallelConfig
    from omni_mega.interop.convert import read_checkpoint_info, resolve_step_dir
    from omni_mega.interop.dcp import tensor_metadata
    from omni_mega.inference import SamplingParams
    from omni_mega.models.factory import build_model
    from omni_mega.runtime import init_distributed
    from omni_mega.runtime.env import detect
    from omni_mega.training import checkpoint as ckpt_io

    if not args.prompt and not args.prompt_ids:
        raise ValueError("give --prompt TEXT or --prompt-ids 1,2,3")
    from omni_mega.interop.convert import read_checkpoint_info, resolve_step_dir

    cfg, meta = read_checkpoint_info(resolve_step_dir(args.ckpt))
    tok_dir = args.tokenizer or meta.get("tokenizer")
    tokenizer = _Tokenizer(tok_dir) if tok_dir else None
    if args.prompt and tokenizer is None:
        raise ValueError("--prompt needs a tokenizer: pass --tokenizer DIR (none is recorded in the checkpoint), or "
                         "use --prompt-ids")
    if args.image and cfg.vit is None:
        raise ValueError("--image: this checkpoint has no vision tower")
    try:
        prompts = [[int(x) for x in p.split(",") if x.strip()] for p in args.prompt_ids]
    except ValueError:
        raise ValueError(f"--prompt-ids: expected comma-separated integers, got {args.prompt_ids}") from None
    prompts += [tokenizer.tokenize(p) for p in args.prompt]
    from omni_mega.training.serving import load_for_inference

    loaded = load_for_inference(args.ckpt, seed=args.seed)
    model, padded = loaded.model, loaded.padded_vocab
    vocab = cfg.llm.vocab_size or (tokenizer.vocab_size if tokenizer else padded)
    hf = meta.get("hf_config") or {}
    eos = args.eos_id if args.eos_id is not None else _as_list(hf.get("eos_token_id",
                                                                      (hf.get("text_config") or {}).get("eos_token_id")))
    pixel_values = grid_thw = None
    if args.image:
        pixel_values, grid_thw, image_ids = _images(args.image, cfg, hf)
        prompts = [image_ids + p for p in prompts]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed, eos_token_ids=eos)
    return {"model": model, "vocab": vocab, "prompts": prompts, "params": params, "tokenizer": tokenizer,
            "pixel_values": pixel_values, "grid_thw": grid_thw, "rank0": loaded.rank0,
            "image_token_id": (cfg.connector or ConnectorConfig()).image_token_id}


class _Tokenizer:
    """The `tokenizers` file of a folder (nothing downloaded): encode without special tokens, decode skipping them."""

    def __init__(self, folder: str) -> None:
        from tokenizers import Tokenizer

        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"tokenizer {folder}: no tokenizer.json there")
        self._tok = Tokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


def _as_list(v) -> list[int]:
    return [] if v is None else [int(x) for x in (v if isinstance(v, list) else [v])]


def _images(paths: list[str], cfg, hf: dict):
    """Decoded, resized (Qwen2-VL's smart_resize) and packed images, and the prompt ids that stand for them:
    per image its placeholders, wrapped in the vision start/end tokens when the model has them (Qwen2-VL)."""
    import torch

    from omni_mega.config import ConnectorConfig
    from omni_mega.data.images import decode_images
    from omni_mega.ops import pack_images

    vit = cfg.vit
    blobs = []
    for p in paths:
        try:
            blobs.append(Path(p).read_bytes())
        except OSError as e:
            raise ValueError(f"--image {p}: {e.strerror}") from None
    images, stats = decode_images(blobs, patch_size=vit.patch_size, merge_size=vit.merge_size, backend="pillow",
                                  num_threads=1)
    bad = [p for p, im in zip(paths, images) if im is None]
    if bad:
        raise ValueError(f"--image {bad[0]}: rejected ({stats.summary()})")
    packed = pack_images(images, patch_size=vit.patch_size, merge_size=vit.merge_size,
                         temporal_patch_size=vit.temporal_patch_size)
    img = (cfg.connector or ConnectorConfig()).image_token_id
    start, end = hf.get("vision_start_token_id"), hf.get("vision_end_token_id")
    ids: list[int] = []
    for t, h, w in packed.grid_thw.tolist():
        n = t * h * w // vit.merge_size ** 2
        ids += ([start] if start is not None else []) + [img] * n + ([end] if end is not None else [])
    return packed.pixel_values, packed.grid_thw.to(torch.int64), ids


def _plan(cfg, world_size: int) -> str:
    from omni_mega.training.dry_run import format_plan

    return format_plan(cfg, world_size)


def cmd_train(config: str, run_dir: str | None, overrides: list[str], dry_run: bool, resume: str | None = None,
              plan_world_size: int | None = None, overwrite: bool = False, stage: str | None = None) -> int:
    from omni_mega.config import ConfigError, load_config, validate
    from omni_mega.config.graph import is_graph
    from omni_mega.runtime.env import detect

    try:
        cfg = load_config(config, overrides)
        if stage is not None or is_graph(cfg):  # a stage graph: jobs, each its own run (cmd_train_graph)
            return cmd_train_graph(cfg, run_dir, stage, dry_run, resume, plan_world_size, overwrite)
        world, note = detect().world_size, None
        if dry_run:  # plan for the asked layout, or the smallest that fits this config
            from omni_mega.training.dry_run import planning_world_size

            world, note = planning_world_size(cfg, plan_world_size, world)
        validate(cfg, world_size=world)
    except (ConfigError, FileNotFoundError) as e:
        print(f"omni-mega: config error: {e}", file=sys.stderr)
        return 2
    if dry_run:
        if note:
            print(note)
        print(_plan(cfg, world))
        return _check_hf_sources(cfg)
    from omni_mega.runtime import init_distributed, shutdown

    rt = init_distributed(cfg.parallel, seed=cfg.train.seed)
    out = Path(run_dir or Path("runs") / cfg.name)
    trainer, code = _run(cfg, rt, out, resume, overwrite)
    if trainer is not None and rt.is_rank0:
        print(f"done: metrics in {out / 'metrics.jsonl'}")
    shutdown()
    return code


def _check_hf_sources(cfg) -> int:
    """`--dry-run`: every stage's `init_from: hf:PATH` checked against its config.json (skipped, and said so, when
    the path is not on this machine)."""
    from omni_mega.config import ConfigError
    from omni_mega.training.init_from import validate_hf_sources

    try:
        for s in cfg.stages:
            for note in validate_hf_sources(s.init_from, cfg.model, f"stages[{s.name}].init_from"):
                print(note)
    except ConfigError as e:
        print(f"omni-mega: config error: {e}", file=sys.stderr)
        return 2
    return 0


def _run(cfg, rt, out: Path, resume: str | None, overwrite: bool):
    """(trainer, exit code): builds the Trainer and trains; errors found before step 1 (config, run dir,
    checkpoints) exit 2, a run stopped for non-finite steps exits 3, each with one line on stderr."""
    from omni_mega.config import ConfigError
    from omni_mega.training.run_dir import RunDirError
    from omni_mega.training.trainer import Trainer, TrainingDiverged

    try:
        trainer = Trainer(cfg, rt, out, resume=resume, overwrite=overwrite)
    except (ConfigError, FileNotFoundError, RunDirError) as e:  # found while setting up: before step 1
        kind = "run dir error" if isinstance(e, RunDirError) else "config error"
        print(f"omni-mega: {kind}: {e}", file=sys.stderr)
        return None, 2
    try:
        trainer.train()
    except TrainingDiverged as e:
        print(f"omni-mega: training stopped: {e}", file=sys.stderr)
        return None, 3
    return trainer, 0


def cmd_demo(run_dir: str, overrides: list[str], dry_run: bool, resume: str | None = None,
             num_captions: int = 6, overwrite: bool = False) -> int:
    """`omni-mega demo`: builds the built-in image-text data, trains examples/configs/tiny_omni.yaml (text pretrain
    -> joint with a ratio ramp -> cooldown -> long context), then writes greedy captions of held-out images next to
    their true text to <run dir>/captions.json (`omni-mega report` puts them in report.md)."""
    config = str(EXAMPLES / DEMO_CONFIG)
    if dry_run:
        return cmd_train(config, run_dir, overrides, True, resume)
    from omni_mega.config import ConfigError, load_config, validate
    from omni_mega.runtime.env import detect

    try:
        cfg = load_config(config, overrides)
        validate(cfg, world_size=detect().world_size)
    except (ConfigError, FileNotFoundError) as e:
        print(f"omni-mega: config error: {e}", file=sys.stderr)
        return 2
    from omni_mega.data.demo.scenes import build_demo_data
    from omni_mega.runtime import init_distributed, shutdown
    from omni_mega.training.generate import write_captions

    out = Path(run_dir)
    rt = init_distributed(cfg.parallel, seed=cfg.train.seed)
    trainer, code = _run(cfg, rt, out, resume, overwrite)
    if trainer is None:
        shutdown()
        return code
    heldout = build_demo_data(cfg.data.data_dir or out / "data")["heldout"]  # built with the training data
    one_chunk = cfg.parallel.tp == cfg.parallel.pp == cfg.parallel.cp == 1 and cfg.parallel.vpp is None
    if rt.is_rank0 and one_chunk:  # no collectives in a tp = pp = 1 forward: rank 0 captions alone
        path = write_captions(trainer, heldout, num_captions)
        for c in json.loads(path.read_text())["captions"]:
            print(f"  {c['key']}: true {c['true']!r}\n  {' ' * len(c['key'])}  model {c['generated']!r}")
        print(f"done: metrics in {out / 'metrics.jsonl'}, captions in {path}")
    elif rt.is_rank0:
        print(f"done: metrics in {out / 'metrics.jsonl'} (captions need tp = pp = 1: "
              "the whole model in one chunk)")
    shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        if args.world_size is not None and args.nodes is not None:
            print("omni-mega: give --world-size or --nodes/--gpus-per-node, not both", file=sys.stderr)
            return 2
        world = args.world_size if args.nodes is None else args.nodes * args.gpus_per_node
        return cmd_train(args.config, args.run_dir, args.overrides, args.dry_run, args.resume, plan_world_size=world,
                         overwrite=args.overwrite, stage=args.stage)
    if args.command == "demo" and args.audio:
        return cmd_demo_audio(args.run_dir or "runs/demo_audio", args.overrides, args.dry_run, args.resume,
                              overwrite=args.overwrite)
    if args.command == "demo":
        return cmd_demo(args.run_dir or "runs/demo", args.overrides, args.dry_run, args.resume,
                        overwrite=args.overwrite)
    if args.command == "verify-ckpt":
        return cmd_verify_ckpt(args.dir)
    if args.command == "eval":
        return cmd_eval(args)
    if args.command == "report":
        from omni_mega.training.report import write_report

        root = Path(args.run_dir)
        if not (root / "metrics.jsonl").exists() and any(root.glob("*/metrics.jsonl")):  # a stage graph's run dir
            for job in sorted(p.parent for p in root.glob("*/metrics.jsonl")):
                png, md = write_report(job)
                print(f"wrote {png} and {md}")
            return 0
        png, md = write_report(root)
        print(f"wrote {png} and {md}")
        return 0
    if args.command == "import-hf":
        return cmd_import_hf(args)
    if args.command == "export-hf":
        return cmd_export_hf(args)
    if args.command == "generate":
        return cmd_generate(args)
    return 1


# ---- stage graphs (config.graph) and the μOmni demo ---------------------------------------------------------------
AUDIO_DEMO_CONFIG = "muomni_5stage.yaml"


def cmd_train_graph(cfg, run_dir: str | None, stage: str | None, dry_run: bool, resume: str | None,
                    plan_world_size: int | None, overwrite: bool, *, after_job=None) -> int:
    """A stage graph: `--stage JOB` runs one job in <run dir>/JOB, else every job in dependency order (each its own
    Trainer, reseeded, so a job trains the same alone or in the graph). `--dry-run` prints the graph and each job's
    plan. `after_job(name, trainer)` runs after each job (the demo's outputs). Errors exit 2 (config) or 3."""
    from omni_mega.config import ConfigError, validate
    from omni_mega.config import graph
    from omni_mega.runtime.env import detect

    root = Path(run_dir or Path("runs") / cfg.name)
    try:
        graph.check(cfg)
        if resume not in (None, "auto") and stage is None:
            raise ConfigError(f"--resume {resume}: a checkpoint path resumes one job; add --stage JOB (or use "
                              "--resume auto, which resumes every job from its own run dir)")
        order = graph.topo_order(cfg)
        names = [graph.find_job(cfg, stage)] if stage is not None else order
        world, configs, notes = detect().world_size, {}, {}
        for j in (order if dry_run else names):
            jc = graph.job_config(cfg, j, root)
            w = world
            if dry_run:
                from omni_mega.training.dry_run import planning_world_size

                w, notes[j] = planning_world_size(jc, plan_world_size, world)
            validate(jc, world_size=w)
            configs[j] = (jc, w)
    except (ConfigError, FileNotFoundError) as e:
        print(f"omni-mega: config error: {e}", file=sys.stderr)
        return 2
    if dry_run:
        print(graph.format_graph(cfg))
        for j, (jc, w) in configs.items():
            print(f"\n==== job {j} (run dir {root / j}) ====")
            if notes.get(j):
                print(notes[j])
            print(_plan(jc, w))
        return _check_hf_sources(cfg)
    from omni_mega.runtime import init_distributed, shutdown

    for j in names:
        jc = configs[j][0]
        rt = init_distributed(jc.parallel, seed=jc.train.seed)  # reseeds: a job alone or in the graph is the same
        if rt.is_rank0:
            print(f"==== job {j}: {', '.join(s.name for s in jc.stages)} -> {root / j}", flush=True)
        trainer, code = _run(jc, rt, root / j, resume, overwrite)
        if code:
            shutdown()
            return code
        if after_job is not None:
            after_job(j, trainer, rt)
    shutdown()
    return 0


def cmd_demo_audio(run_dir: str, overrides: list[str], dry_run: bool, resume: str | None = None,
                   overwrite: bool = False) -> int:
    """`omni-mega demo --audio`: μOmni's five stages on the built-in synthetic speech, shapes and scenes
    (examples/configs/muomni_5stage.yaml, every job of its graph in order), then speech from the Talker
    (speech/*.wav), held-out transcriptions and `report.md` with CER per step, the codec's reconstruction error and
    the stage-E losses."""
    from omni_mega.config import ConfigError, load_config

    try:
        cfg = load_config(str(EXAMPLES / AUDIO_DEMO_CONFIG), overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"omni-mega: config error: {e}", file=sys.stderr)
        return 2
    from omni_mega.training.speech_demo import DemoOutputs

    outputs = DemoOutputs(cfg, Path(run_dir))
    code = cmd_train_graph(cfg, run_dir, None, dry_run, resume, None, overwrite,
                           after_job=None if dry_run else outputs.after_job)
    if code or dry_run:
        return code
    md = outputs.report()
    print(f"done: {Path(run_dir)} (report {md})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
