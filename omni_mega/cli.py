"""`omni-mega` command line: train, demo, --version. Also `python -m omni_mega`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import omni_mega

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"
DEMO_CONFIG = "tiny_text.yaml"


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default=None, help="where metrics, TensorBoard logs and checkpoints go (default runs/<name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set parallel.tp=2 --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="load and validate the config, print the plan, do not train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omni-mega", description=omni_mega.__doc__)
    parser.add_argument("--version", action="version", version=f"omni_mega {omni_mega.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train from a YAML run config (launch with torchrun/srun for several ranks)")
    train.add_argument("config", help="path to a run config YAML (see examples/configs)")
    _add_train_args(train)
    demo = sub.add_parser("demo", help="the embedded default run on the built-in data")
    _add_train_args(demo)
    return parser


def _plan(cfg) -> str:
    d, par = cfg.data, cfg.parallel
    lines = [f"run {cfg.name}: {cfg.total_steps} steps, seq {d.seq_length}, global batch {d.global_batch_size} "
             f"({cfg.total_steps * d.global_batch_size * d.seq_length:,} tokens), tp={par.tp} pp={par.pp} "
             f"vpp={par.vpp} cp={par.cp} sp={par.sp}"]
    lines += [f"  stage {s.name}: {s.steps} steps" for s in cfg.stages]
    return "\n".join(lines)


def cmd_train(config: str, run_dir: str | None, overrides: list[str], dry_run: bool) -> int:
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
    Trainer(cfg, rt, out).train()
    if rt.is_rank0:
        print(f"done: metrics in {out / 'metrics.jsonl'}")
    shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return cmd_train(args.config, args.run_dir, args.overrides, args.dry_run)
    if args.command == "demo":
        return cmd_train(str(EXAMPLES / DEMO_CONFIG), args.run_dir or "runs/demo", args.overrides, args.dry_run)
    return 1


if __name__ == "__main__":
    sys.exit(main())
