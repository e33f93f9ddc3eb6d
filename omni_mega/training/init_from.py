"""A stage's `init_from`: one source for the whole model, or a map from module groups to sources, composed.

    init_from: runs/p1                                   # one checkpoint (or run dir: its newest); may be partial
    init_from: hf:/models/Qwen3-1.7B                     # a Hugging Face folder
    init_from: {llm: hf:/models/Qwen3-1.7B, vit: hf:/models/qwen2-vl, projector: runs/p1}

A source is an omni_mega checkpoint dir, a run dir (its newest complete checkpoint), or `hf:PATH`. A Hugging Face
source is converted once (rank 0, streaming, `omni_mega.interop`) into a dist checkpoint cached under
`<run dir>/init_from/`, so every source is then a megatron dist checkpoint and each rank reads only its own TP/PP
shard of it through `dist_checkpointing` (which reshards). Keys of a text-only source map onto the `llm.` part of a
vision-language model and back.

Everything is checked before step 1 (`prepare`): group names, that the source holds a tensor for every parameter of
its group (a plain one-source init_from may be partial, as before; the group's saved buffers come along where the
source has them), and global shapes, with errors naming the
stage, group, tensor and both shapes. `apply` loads the sources in order (a later group overrides an earlier one
where they overlap) and returns log lines saying which parameters came from where.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from omni_mega.config import ConfigError, ModelConfig, RunConfig
from omni_mega.config.groups import check_group_name, model_groups

# torch, megatron and the models are imported where used: `--dry-run` checks hf: sources without them.

log = logging.getLogger(__name__)
HF = "hf:"


@dataclass
class Source:
    group: str | None  # None: the whole model (a one-source init_from)
    spec: str  # as configured
    path: Path  # the dist checkpoint's step dir (a converted HF source: its cache dir)
    # per chunk: {parameter name: the source's checkpoint key}; the sharded tensors are rebuilt at load time, since
    # megatron's DDP may move the parameters into its buffers between the check and the load
    keys: list[dict[str, str]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # parameter names loaded from it (this rank)
    kept: list[str] = field(default_factory=list)  # one-source only: parameters the checkpoint does not hold


def sources_of(init_from) -> list[tuple[str | None, str]]:
    if init_from is None:
        return []
    if isinstance(init_from, str):
        return [(None, init_from)]
    return list(init_from.items())


def _hf_cache(spec: str, cache_root: Path) -> Path:
    hf_dir = Path(spec[len(HF):]).expanduser()
    cfg = hf_dir / "config.json"
    stamp = f"{hf_dir.resolve()}:{cfg.stat().st_mtime_ns if cfg.exists() else 0}"
    return cache_root / f"{hf_dir.name}-{hashlib.sha1(stamp.encode()).hexdigest()[:10]}"


def _resolve(spec: str, where: str, cache_root: Path, is_rank0: bool) -> Path:
    from omni_mega.interop import InteropError
    from omni_mega.training import checkpoint as ckpt_io

    if spec.startswith(HF):
        from omni_mega.interop.convert import MARKER, import_hf

        out = _hf_cache(spec, cache_root)
        error = None
        if is_rank0 and not (out / MARKER).exists():
            try:
                log.info("%s: converting %s into %s (once; reused by later runs)", where, spec, out)
                import_hf(spec[len(HF):], out, overwrite=True)
            except InteropError as e:
                error = str(e)
        from omni_mega.runtime.collectives import all_true

        if not all_true(error is None):
            raise ConfigError(f"{where} ({spec}): {error or 'rank 0 could not convert it'}")
        return out
    try:
        return ckpt_io.resolve_ckpt(spec)
    except FileNotFoundError as e:
        raise ConfigError(f"{where}: {e}") from None


def _source_key(key: str, available: dict) -> str | None:
    """The key of `key` in the source: itself, or moved between a text-only model and a VLM's `llm.` part."""
    if key in available:
        return key
    if key.startswith("llm.") and key[4:] in available:
        return key[4:]
    if "llm." + key in available:
        return "llm." + key
    return None


def _global_shape(p, tp: int) -> tuple[int, ...]:
    shape = list(p.shape)
    if getattr(p, "tensor_model_parallel", False):
        shape[p.partition_dim] *= tp
    return tuple(shape)


def prepare(init_from, where: str, chunks: list, cfg: RunConfig, cache_root: Path, *, tp: int,
            is_rank0: bool) -> list[Source]:
    """Resolves and checks a stage's init_from against this rank's chunks (unwrapped); raises ConfigError."""
    from omni_mega.interop.dcp import tensor_metadata
    from omni_mega.models.groups import resolve, resolve_buffers
    from omni_mega.training import checkpoint as ckpt_io
    from omni_mega.training.checkpoint import CKPT_METADATA
    from omni_mega.training.resume import check_model_shape

    model_cfg = cfg.model

    known = model_groups(model_cfg)
    out = []
    for group, spec in sources_of(init_from):
        here = where if group is None else f"{where}.{group}"
        if group is not None:
            try:
                check_group_name(group, known)
            except ValueError as e:
                raise ConfigError(f"{here}: {e}") from None
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"{here}: expected a checkpoint dir, run dir or hf:PATH, got {spec!r}")
        path = _resolve(spec, here, cache_root, is_rank0)
        if group is None and not spec.startswith(HF):  # one omni_mega checkpoint: the model fields first
            check_model_shape(ckpt_io.read_state(path), cfg, f"{here} ({path})")
        meta = tensor_metadata(path / "dist")
        src = Source(group, spec, path)
        for chunk in chunks:
            sharded = chunk.sharded_state_dict(metadata=CKPT_METADATA)
            params = dict(chunk.named_parameters())
            buffers = dict(chunk.named_buffers())
            chosen = ({id(p) for p in resolve([chunk], group)} if group is not None
                      else {id(p) for p in params.values()})
            # The group's saved buffers (running statistics) come with it: a frozen part stays as its source wrote
            # it; a source without them (an HF folder) leaves them as initialised.
            chosen |= ({id(b) for b in resolve_buffers([chunk], group)} if group is not None
                       else {id(b) for b in buffers.values()})
            keys = {}
            for name, p in [*params.items(), *buffers.items()]:
                if id(p) not in chosen:
                    continue
                sh = sharded.get(name)
                if sh is None:  # e.g. the tied output layer, held as the embedding; buffers not saved
                    continue
                key = _source_key(sh.key, meta)
                if key is None:
                    if group is None or name in buffers:
                        src.kept.append(name)
                        continue
                    raise ConfigError(f"{here} ({spec}): the source has no tensor for {name} (checkpoint key "
                                      f"{sh.key}): it does not hold group {group!r}")
                want, have = _global_shape(p, tp), meta[key][0]
                if tuple(want) != tuple(have):
                    raise ConfigError(f"{here} ({spec}): {name}: the source's {key} has shape {list(have)}, the "
                                      f"model's is {list(want)}")
                keys[name] = key
                src.names.append(name)
            src.keys.append(keys)
        out.append(src)
    groups = [s for s in out if s.group is not None]
    if groups and not any(s.names for s in groups) and is_rank0:
        log.warning("%s: the sources provide no parameter held on rank 0", where)
    return out


def apply(sources: list[Source], chunks: list) -> list[str]:
    """Loads every source into the chunks (each rank its own shards; collective over all ranks, in order).
    Returns log lines (rank-local counts)."""
    from megatron.core import dist_checkpointing

    from omni_mega.training.checkpoint import CKPT_METADATA

    lines = []
    loaded: dict[str, str] = {}
    sharded = [c.sharded_state_dict(metadata=CKPT_METADATA) for c in chunks]
    for src in sources:
        request = {f"c{i}": {n: dataclasses.replace(sharded[i][n], key=k) for n, k in src.keys[i].items()}
                   for i in range(len(chunks))}
        state = dist_checkpointing.load(request, str(src.path / "dist"))
        for i, chunk in enumerate(chunks):
            part = state.get(f"c{i}", {})
            if part:
                missing, unexpected = chunk.load_state_dict(part, strict=False)
                assert not unexpected, unexpected
        for n in src.names:
            loaded[n] = src.spec
        if src.group is None and not src.spec.startswith(HF):  # as the trainer always said it
            kept = src.kept
            lines.append(f"init_from {src.path}: {len(src.names)} parameter tensors from the checkpoint, {len(kept)} "
                         f"kept from the current model" + (f" ({', '.join(kept[:6])}{', ...' if len(kept) > 6 else ''})"
                                                           if kept else ""))
            continue
        what = "the whole model" if src.group is None else f"group {src.group}"
        lines.append(f"init_from {what} <- {src.spec}: {len(src.names)} parameter tensors"
                     + (f" (from {src.path})" if src.spec.startswith(HF) else "")
                     + (f"; {len(src.kept)} not in it, kept ({', '.join(src.kept[:4])}"
                        f"{', ...' if len(src.kept) > 4 else ''})" if src.kept else ""))
    if any(s.group is not None for s in sources):
        untouched = sorted({n for c in chunks for n, _ in c.named_parameters()} - set(loaded))
        if untouched:
            lines.append(f"init_from: {len(untouched)} parameter tensors keep their initialisation "
                         f"({', '.join(untouched[:4])}{', ...' if len(untouched) > 4 else ''})")
    for n, spec in sorted(loaded.items()):
        log.debug("init_from: %s <- %s", n, spec)
    return lines


def validate_hf_sources(init_from, model_cfg: ModelConfig, where: str) -> list[str]:
    """`--dry-run`: compares each `hf:` source's config.json with the model config (the groups it feeds); returns
    notes (a skipped check when the path does not exist) and raises ConfigError on a mismatch."""
    notes = []
    for group, spec in sources_of(init_from):
        if not isinstance(spec, str) or not spec.startswith(HF):
            continue
        here = where if group is None else f"{where}.{group}"
        path = Path(spec[len(HF):]).expanduser()
        if not (path / "config.json").is_file():
            notes.append(f"{here}: {path} not found here; its config.json was not checked against the model")
            continue
        notes.append(check_hf_config(path, model_cfg, group, here))
    return notes


def check_hf_config(path: Path, model_cfg: ModelConfig, group: str | None, where: str) -> str:
    import json

    from omni_mega.interop import InteropError
    from omni_mega.interop.arch import family_of
    from omni_mega.config import to_dict

    try:
        src = family_of(json.loads((path / "config.json").read_text())).to_config(
            json.loads((path / "config.json").read_text()))
    except (InteropError, ValueError) as e:
        raise ConfigError(f"{where}: {path}: {e}") from None
    parts = ["llm"] if group is None or group.startswith("llm") else ["vit"] if group.startswith("vit") else []
    if group is None and model_cfg.vit is not None:
        parts.append("vit")
    diffs = []
    for part in parts:
        mine, theirs = to_dict(model_cfg).get(part), to_dict(src).get(part)
        if theirs is None:
            diffs.append(f"the source has no {part}")
            continue
        for k in SHAPE_FIELDS[part]:
            if mine.get(k) != theirs.get(k) and not (k == "ffn_hidden_size" and mine.get(k) is None):
                diffs.append(f"model.{part}.{k}: config {mine.get(k)!r}, {path.name} {theirs.get(k)!r}")
    if diffs:
        raise ConfigError(f"{where}: {path}/config.json does not match the model: " + "; ".join(diffs))
    return f"{where}: {path}/config.json matches the model ({', '.join(parts) or 'no shape fields'})"


SHAPE_FIELDS = {
    "llm": ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels", "ffn_hidden_size",
            "vocab_size", "add_qkv_bias", "qk_layernorm", "untie_embeddings"),
    "vit": ("num_layers", "hidden_size", "num_attention_heads", "patch_size", "temporal_patch_size", "in_channels",
            "ffn_hidden_size", "class_token", "pre_norm"),
}
