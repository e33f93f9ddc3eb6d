"""`omni-mega` command line: train (with --resume), demo, report, --version. Also `python -m omni_mega`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import omni_mega

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"
DEMO_CONFIG = "tiny_text_curriculum.yaml"


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default=None, help="where metrics, TensorBoard logs and checkpoints go (default runs/<name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set parallel.tp=2 --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="load and validate the config, print the plan, do not train")
    p.add_argument("--resume", default=None, metavar="auto|CKPT",
                   help="auto: continue from the newest complete checkpoint in the run dir (from scratch if none); "
                        "or a checkpoint dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omni-mega", description=omni_mega.__doc__)
    parser.add_argument("--version", action="version", version=f"omni_mega {omni_mega.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train from a YAML run config (launch with torchrun/srun for several ranks)")
    train.add_argument("config", help="path to a run config YAML (see examples/configs)")
    _add_train_args(train)
    demo = sub.add_parser("demo", help="the embedded default run on the built-in data")
    _add_train_args(demo)
    report = sub.add_parser("report", help="write report.png (loss and LR, stage boundaries) and report.md of a run")
    report.add_argument("run_dir", help="a run dir with metrics.jsonl")
    return parser


def _plan(cfg) -> str:
    from omni_mega.training.curriculum import plan_stages

    d, par = cfg.data, cfg.parallel
    tokens = sum(p.steps * p.global_batch_size * p.seq_length for p in plan_stages(cfg))
    lines = [f"run {cfg.name}: {cfg.total_steps} steps, seq {d.seq_length}, global batch {d.global_batch_size} "
             f"({tokens:,} tokens), tp={par.tp} pp={par.pp} "
             f"vpp={par.vpp} cp={par.cp} sp={par.sp}"]
    for p in plan_stages(cfg):
        lines.append(f"  stage {p.name}: {p.steps} steps, seq {p.seq_length}, global batch {p.global_batch_size}, "
                     f"RoPE base {p.rope_base:g}, schedule {p.cfg.schedule}, trainable {', '.join(p.cfg.trainable)}")
    return "\n".join(lines)


def cmd_train(config: str, run_dir: str | None, overrides: list[str], dry_run: bool, resume: str | None = None) -> int:
    from omni_mega.config import ConfigError, load_config, validate
    from omni_mega.runtime.env import detect

    try:
        cfg = load_config(config, overrides)
        validate(cfg, world_size=detect().world_size)
    except (ConfigError, FileNotFoundError) as e:
        print(f"omni-mega: config error: {e}", file=sys.stderr)
        return 2
    if dry_run:
        print(_plan(cfg))
        return 0
    from omni_mega.runtime import init_distributed, shutdown
    from omni_mega.training.trainer import Trainer

    rt = init_distributed(cfg.parallel, seed=cfg.train.seed)
    out = Path(run_dir or Path("runs") / cfg.name)
    try:
        trainer = Trainer(cfg, rt, out, resume=resume)
    except (ConfigError, FileNotFoundError) as e:  # found while setting up (groups, checkpoints): before step 1
        print(f"omni-mega: config error: {e}", file=sys.stderr)
        return 2
    trainer.train()
    if rt.is_rank0:
        print(f"done: metrics in {out / 'metrics.jsonl'}")
    shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return cmd_train(args.config, args.run_dir, args.overrides, args.dry_run, args.resume)
    if args.command == "demo":
        return cmd_train(str(EXAMPLES / DEMO_CONFIG), args.run_dir or "runs/demo", args.overrides, args.dry_run,
                         args.resume)
    if args.command == "report":
        from omni_mega.training.report import write_report

        png, md = write_report(Path(args.run_dir))
        print(f"wrote {png} and {md}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
