"""Stage graphs: one config holding several independent runs ("jobs") and the runs that compose them.

A stage that sets `job: NAME` belongs to job NAME; a job's stages run in config order as one ordinary run (one
curriculum, one run dir). Jobs depend on each other only through `init_from` sources written `job:NAME`, which
name the run dir of job NAME: `<graph run dir>/NAME`. So μOmni's curriculum is

    stages:
      - {name: thinker, job: A, ...}                       # A, B, C, D depend on nothing: a job array
      - {name: asr, job: B, objective: ctc, ...}
      - {name: vision, job: C, objective: classify, ...}
      - {name: codec, job: D, objective: rvq, ...}
      - {name: talker, job: D, objective: talker, ...}     # D's second stage, after its first
      - {name: omni_sft, job: E, init_from: {llm: "job:A", audio: "job:B", vit: "job:C", codec: "job:D"}, ...}

`omni-mega train CONFIG --stage NAME --run-dir ROOT` runs job NAME (or the job of stage NAME) in ROOT/NAME;
without `--stage` every job runs in dependency order. A job builds only the model parts its stages use (trainable
groups, objectives, init_from groups, data), so the ASR job does not carry the codec. Pure Python: `--dry-run`
prints the graph without torch.
"""

from __future__ import annotations

import copy
from pathlib import Path

from omni_mega.config.checks import ConfigError
from omni_mega.config.model import ModelConfig
from omni_mega.config.schema import RunConfig
from omni_mega.config.stage import AUDIO_SOURCES, MM_SOURCES, StageConfig

JOB_REF = "job:"
# Model parts a group name belongs to (the LLM is always built).
_PART_OF_GROUP = {"vit": "vit", "visual_head": "vit", "vet": "vit", "projector": "vit", "audio": "audio",
                  "ctc_head": "audio", "audio_projector": "audio", "codec": "codec", "talker": "talker",
                  "classifier": "classifier", "image_pooler": "contrastive", "text_tower": "contrastive",
                  "caption_decoder": "contrastive"}
_PARTS_OF_OBJECTIVE = {"ctc": ("audio",), "classify": ("vit", "classifier"), "rvq": ("codec",),
                       "talker": ("codec", "talker"), "contrastive": ("vit", "contrastive")}


def is_graph(cfg: RunConfig) -> bool:
    return any(s.job is not None for s in cfg.stages)


def jobs(cfg: RunConfig) -> dict[str, list[StageConfig]]:
    """Job name -> its stages in config order ({} for a config that is one run)."""
    out: dict[str, list[StageConfig]] = {}
    for s in cfg.stages:
        if s.job is not None:
            out.setdefault(s.job, []).append(s)
    return out


def refs(stage: StageConfig) -> list[str]:
    """Jobs a stage's init_from reads (`job:NAME` sources)."""
    src = stage.init_from
    values = [src] if isinstance(src, str) else list(src.values()) if isinstance(src, dict) else []
    return [v[len(JOB_REF):] for v in values if isinstance(v, str) and v.startswith(JOB_REF)]


def dependencies(cfg: RunConfig) -> dict[str, list[str]]:
    """Job -> the jobs it reads, in config order."""
    out = {}
    for name, stages in jobs(cfg).items():
        seen: list[str] = []
        for s in stages:
            for r in refs(s):
                if r not in seen:
                    seen.append(r)
        out[name] = seen
    return out


def check(cfg: RunConfig) -> None:
    """Raises ConfigError for a malformed graph: stages with and without a job, a reference to an unknown job or to
    the stage's own job, `job:` references outside a graph, a cycle, or a job's stages not adjacent."""
    if not is_graph(cfg):
        for s in cfg.stages:
            if refs(s):
                raise ConfigError(f"stages[{s.name}].init_from: job: sources need a stage graph (set `job:` on every "
                                  "stage)")
        return
    loose = [s.name for s in cfg.stages if s.job is None]
    if loose:
        raise ConfigError(f"stages[{loose[0]}].job: in a stage graph every stage names its job; stages {loose} do not")
    names = list(jobs(cfg))
    order = [s.job for s in cfg.stages]
    for j in names:
        first, last = order.index(j), len(order) - 1 - order[::-1].index(j)
        if any(o != j for o in order[first:last + 1]):
            raise ConfigError(f"stages: the stages of job {j!r} must be next to each other (they run in config "
                              "order as one run)")
    for s in cfg.stages:
        for r in refs(s):
            if r not in names:
                raise ConfigError(f"stages[{s.name}].init_from: job:{r} is not a job of this config (jobs: "
                                  f"{', '.join(names)})")
            if r == s.job:
                raise ConfigError(f"stages[{s.name}].init_from: job:{r} is the stage's own job; a later stage of a "
                                  "job continues from the earlier ones without init_from")
    topo_order(cfg)


def topo_order(cfg: RunConfig) -> list[str]:
    """Jobs in an order that runs every job after the jobs it reads (config order among ready ones)."""
    deps, done, out = dependencies(cfg), set(), []
    while len(out) < len(deps):
        ready = [j for j in deps if j not in done and all(d in done for d in deps[j])]
        if not ready:
            left = [j for j in deps if j not in done]
            raise ConfigError(f"stages: the jobs {left} read each other's checkpoints in a cycle")
        out.append(ready[0])
        done.add(ready[0])
    return out


def find_job(cfg: RunConfig, name: str) -> str:
    """The job `--stage NAME` means: a job name, or the job of a stage name."""
    js = jobs(cfg)
    if not js:
        raise ConfigError(f"--stage {name}: this config is one run, not a stage graph (no stage sets `job:`); run it "
                          "without --stage")
    if name in js:
        return name
    for s in cfg.stages:
        if s.name == name:
            return s.job
    raise ConfigError(f"--stage {name}: no job or stage of that name; jobs: {', '.join(js)}")


def parts_used(model: ModelConfig, stages: list[StageConfig]) -> set[str]:
    """The optional model parts (vit, audio, codec, talker, classifier, contrastive) the stages train, load, read or need."""
    used: set[str] = set()
    for s in stages:
        groups = list(s.trainable) + (list(s.init_from) if isinstance(s.init_from, dict) else [])
        for g in groups:
            base = g.split("[")[0].split(".")[0]
            if base in _PART_OF_GROUP:
                used.add(_PART_OF_GROUP[base])
        used.update(_PARTS_OF_OBJECTIVE.get(s.objective, ()))
        if isinstance(s.init_from, str):  # a whole-model source: keep every configured part
            used.update(_PART_OF_GROUP.values())
        for d in s.data:
            if d.source in AUDIO_SOURCES and s.objective not in _PARTS_OF_OBJECTIVE:
                used.add("audio")
            if d.source in MM_SOURCES and s.objective not in _PARTS_OF_OBJECTIVE:
                used.add("vit")
    return used


def job_config(cfg: RunConfig, name: str, root: str | Path | None = None) -> RunConfig:
    """Job `name` as a run of its own: only its stages, only the model parts they use, and (with the graph's run
    dir `root`) its `job:X` sources replaced by `root/X` and the built-in data cached in `root/data`."""
    out = copy.deepcopy(cfg)
    out.stages = [s for s in out.stages if s.job == name]
    if not out.stages:
        raise ConfigError(f"--stage {name}: no stage belongs to job {name!r}")
    used = parts_used(out.model, out.stages)
    m = out.model
    if "vit" not in used:
        m.vit = m.connector = None
    for part in ("audio", "codec", "talker", "classifier", "contrastive"):  # the alignment job drops the towers
        if part not in used:
            setattr(m, part, None)
    if "talker" in used and m.codec is None:
        raise ConfigError("model.codec: the Talker needs the codec")
    out.name = f"{cfg.name}/{name}"
    if root is not None:
        for s in out.stages:
            s.init_from = resolve_refs(s.init_from, Path(root))
        if out.data.data_dir is None:  # built-in data once per graph, not once per job
            out.data.data_dir = str(Path(root) / "data")
    return out


def resolve_refs(init_from, root: Path):
    """init_from with every `job:X` source replaced by the run dir `root/X`."""
    def one(v):
        return str(root / v[len(JOB_REF):]) if isinstance(v, str) and v.startswith(JOB_REF) else v

    if isinstance(init_from, dict):
        return {k: one(v) for k, v in init_from.items()}
    return one(init_from)


def format_graph(cfg: RunConfig) -> str:
    """The graph as text: jobs in run order, their stages and objectives, what each reads and what can run in
    parallel."""
    deps, js = dependencies(cfg), jobs(cfg)
    order = topo_order(cfg)
    level: dict[str, int] = {}
    for j in order:
        level[j] = 1 + max((level[d] for d in deps[j]), default=-1)
    lines = [f"stage graph {cfg.name!r}: {len(js)} jobs (each its own run: omni-mega train CONFIG --stage JOB "
             "--run-dir ROOT runs it in ROOT/JOB)"]
    for lv in range(max(level.values()) + 1):
        wave = [j for j in order if level[j] == lv]
        lines.append(f"  wave {lv + 1}: {', '.join(wave)}" + (" (independent: run in parallel)" if len(wave) > 1
                                                            else ""))
        for j in wave:
            stages = " -> ".join(f"{s.name} ({s.objective}, {s.steps} steps)" for s in js[j])
            after = f"; after {', '.join(deps[j])} (init_from " + ", ".join(
                f"{g} <- {v}" for s in js[j] if isinstance(s.init_from, dict) for g, v in s.init_from.items()
                if isinstance(v, str) and v.startswith(JOB_REF)) + ")" if deps[j] else ""
            lines.append(f"    {j}: {stages}{after}")
    return "\n".join(lines)
