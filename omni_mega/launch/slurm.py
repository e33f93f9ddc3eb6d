"""Renders the SLURM templates in examples/slurm for a run config and a node count.

    python -m omni_mega.launch.slurm pretrain CONFIG --nodes 4 [--gpus-per-node 8] [--time 24:00:00] -o job.sbatch
    python -m omni_mega.launch.slurm preprocess --mode text --input docs.jsonl --output data/docs \\
        --tokenizer-args "--tokenizer-type HuggingFaceTokenizer --tokenizer-model tok.json" -o prep.sbatch

Templates hold `{{NAME}}` fields (bash's own `$VAR`s stay untouched). The pretrain renderer loads and validates the
config for the world size nodes x gpus-per-node, so a layout that cannot run (TP x PP x CP or TP x EP x PP not
dividing the GPUs, the global batch not dividing by DP) fails here, before it waits in the queue; the DP that results is written into
the script, which checks it again against the allocation it gets.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "examples" / "slurm"
_FIELD = re.compile(r"\{\{([A-Z_]+)\}\}")


def render(template: str, values: dict[str, str]) -> str:
    """Fills every `{{NAME}}` of `template`; ValueError names a field without a value or a value with a newline."""
    missing = sorted(set(_FIELD.findall(template)) - set(values))
    if missing:
        raise ValueError(f"template fields without a value: {', '.join(missing)}")
    bad = [k for k, v in values.items() if "\n" in str(v)]
    if bad:
        raise ValueError(f"values must be one line: {', '.join(bad)}")
    return _FIELD.sub(lambda m: str(values[m.group(1)]), template)


@dataclass(frozen=True)
class PretrainJob:
    config: str  # path of the run config YAML, as the job will see it
    nodes: int
    gpus_per_node: int = 8
    cpus_per_task: int = 64  # CPUs per node-task (torchrun + its data workers)
    time: str = "24:00:00"
    partition: str = "gpu"
    run_dir: str | None = None  # default runs/<config name>
    overrides: tuple[str, ...] = ()  # `--set` overrides, passed to the trainer too


def pretrain_values(job: PretrainJob) -> dict[str, str]:
    """Template values for `pretrain_h100.sbatch`; raises ConfigError when the layout does not fit the config."""
    from omni_mega.config import load_config, validate

    if job.nodes < 1 or job.gpus_per_node < 1:
        raise ValueError(f"nodes and gpus_per_node must be >= 1, got {job.nodes} and {job.gpus_per_node}")
    cfg = load_config(job.config, list(job.overrides))
    world = job.nodes * job.gpus_per_node
    validate(cfg, world_size=world)
    par = cfg.parallel
    extra = " ".join(f"--set {shlex.quote(o)}" for o in job.overrides)
    return {
        "JOB_NAME": cfg.name, "NODES": str(job.nodes), "GPUS_PER_NODE": str(job.gpus_per_node),
        "CPUS_PER_TASK": str(job.cpus_per_task), "TIME": job.time, "PARTITION": job.partition,
        "CONFIG": shlex.quote(job.config), "RUN_DIR": shlex.quote(job.run_dir or f"runs/{cfg.name}"),
        "TP": str(par.tp), "PP": str(par.pp), "CP": str(par.cp), "EP": str(par.ep),
        "DP": str(par.data_parallel_size(world)),
        "EXTRA_ARGS": extra,
    }


def render_pretrain(job: PretrainJob) -> str:
    return render((TEMPLATES / "pretrain_h100.sbatch").read_text(), pretrain_values(job))


def render_preprocess(mode: str, input_path: str, output_path: str, tokenizer_args: str | None = None, *,
                      cpus: int = 32, mem: str = "64G", time: str = "12:00:00", partition: str = "cpu",
                      job_name: str | None = None) -> str:
    """`preprocess.sbatch` for tools/preprocess_data.py (mode text) or tools/preprocess_mmdata.py (mode mm)."""
    if mode not in ("text", "mm"):
        raise ValueError(f"mode must be text or mm, got {mode!r}")
    if tokenizer_args is None:  # the built-in byte-level tokenizer of each tool
        tokenizer_args = "--tokenizer-type demo" if mode == "text" else "--tokenizer-type byte"
    if cpus < 1:
        raise ValueError(f"cpus must be >= 1, got {cpus}")
    values = {
        "JOB_NAME": job_name or f"preprocess_{mode}", "CPUS_PER_TASK": str(cpus), "MEM": mem, "TIME": time,
        "PARTITION": partition, "MODE": mode, "INPUT": shlex.quote(input_path),
        "OUTPUT": shlex.quote(output_path),
        "TOKENIZER_ARGS": " ".join(shlex.quote(a) for a in shlex.split(tokenizer_args)),
    }
    return render((TEMPLATES / "preprocess.sbatch").read_text(), values)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m omni_mega.launch.slurm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    t = sub.add_parser("pretrain", help="multi-node training job (examples/slurm/pretrain_h100.sbatch)")
    t.add_argument("config")
    t.add_argument("--nodes", type=int, required=True)
    t.add_argument("--gpus-per-node", type=int, default=8)
    t.add_argument("--cpus-per-task", type=int, default=64)
    t.add_argument("--time", default="24:00:00")
    t.add_argument("--partition", default="gpu")
    t.add_argument("--run-dir", default=None)
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    d = sub.add_parser("preprocess", help="one-node preprocessing job (examples/slurm/preprocess.sbatch)")
    d.add_argument("--mode", choices=["text", "mm"], required=True)
    d.add_argument("--input", required=True)
    d.add_argument("--output", required=True, help="output prefix (text) or directory (mm)")
    d.add_argument("--tokenizer-args", default=None,
                   help="the tool's tokenizer flags as one string (default: its built-in byte tokenizer)")
    d.add_argument("--cpus", type=int, default=32)
    d.add_argument("--mem", default="64G")
    d.add_argument("--time", default="12:00:00")
    d.add_argument("--partition", default="cpu")
    for q in (t, d):
        q.add_argument("-o", "--output-file", default="-", help="where to write the script (- = stdout)")
    return p


def main(argv: list[str] | None = None) -> int:
    from omni_mega.config import ConfigError

    a = _parser().parse_args(argv)
    try:
        if a.kind == "pretrain":
            text = render_pretrain(PretrainJob(a.config, a.nodes, a.gpus_per_node, a.cpus_per_task, a.time,
                                               a.partition, a.run_dir, tuple(a.overrides)))
        else:
            text = render_preprocess(a.mode, a.input, a.output, a.tokenizer_args, cpus=a.cpus, mem=a.mem,
                                     time=a.time, partition=a.partition)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"render_slurm: {e}", file=sys.stderr)
        return 2
    if a.output_file == "-":
        sys.stdout.write(text)
    else:
        Path(a.output_file).write_text(text)
        print(f"wrote {a.output_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
