"""`omni-mega` command line: train (with --resume), demo, report, verify-ckpt, --version. Also `python -m omni_mega`."""

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
    layout = train.add_argument_group("--dry-run layout (plan for a cluster that is not this machine)")
    layout.add_argument("--world-size", type=int, default=None, metavar="N", help="GPUs in the job")
    layout.add_argument("--nodes", type=int, default=None, metavar="N", help="nodes (with --gpus-per-node)")
    layout.add_argument("--gpus-per-node", type=int, default=8, metavar="G", help="GPUs per node (default 8)")
    demo = sub.add_parser("demo", help="the embedded default run on the built-in data")
    _add_train_args(demo)
    report = sub.add_parser("report", help="write report.png (loss and LR, stage boundaries) and report.md of a run")
    report.add_argument("run_dir", help="a run dir with metrics.jsonl")
    verify = sub.add_parser("verify-ckpt", help="check checkpoints against their manifests (exit 0 intact, 1 corrupt, "
                                                "2 bad path)")
    verify.add_argument("dir", help="a checkpoint step dir, or a run dir / ckpt dir (all its step dirs, newest first)")
    return parser


def cmd_verify_ckpt(path: str) -> int:
    """One line per step dir: OK, or its problems. Reads every byte of every checkpoint."""
    from omni_mega.training.manifest import step_dirs, verify_checkpoint

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


def _plan(cfg, world_size: int) -> str:
    from omni_mega.training.dry_run import format_plan

    return format_plan(cfg, world_size)


def cmd_train(config: str, run_dir: str | None, overrides: list[str], dry_run: bool, resume: str | None = None,
              plan_world_size: int | None = None, overwrite: bool = False) -> int:
    from omni_mega.config import ConfigError, load_config, validate
    from omni_mega.runtime.env import detect

    try:
        cfg = load_config(config, overrides)
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
        return 0
    from omni_mega.runtime import init_distributed, shutdown

    rt = init_distributed(cfg.parallel, seed=cfg.train.seed)
    out = Path(run_dir or Path("runs") / cfg.name)
    trainer, code = _run(cfg, rt, out, resume, overwrite)
    if trainer is not None and rt.is_rank0:
        print(f"done: metrics in {out / 'metrics.jsonl'}")
    shutdown()
    return code


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
                         overwrite=args.overwrite)
    if args.command == "demo":
        return cmd_demo(args.run_dir or "runs/demo", args.overrides, args.dry_run, args.resume,
                        overwrite=args.overwrite)
    if args.command == "verify-ckpt":
        return cmd_verify_ckpt(args.dir)
    if args.command == "report":
        from omni_mega.training.report import write_report

        png, md = write_report(Path(args.run_dir))
        print(f"wrote {png} and {md}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
