"""`omni-mega report RUN_DIR`: report.png (loss and LR over the whole run, stage boundaries marked; the multimodal
token share per step when the run logged one; DPO's reward accuracy when a stage optimised it) and report.md
(throughput, a table per stage, the objectives' own metrics per stage, held-out exact match after stages that
evaluated (`eval.jsonl`), packing efficiency and the greedy captions of `captions.json` when present) from
metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from omni_mega.training.metrics import read_metrics


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def throughput(rows: list[dict]) -> float:
    """Tokens per second over the logged steps: their tokens over their summed step times (a mean of per-step rates
    would overweight the fast steps)."""
    tokens = [r.get("tokens", 0) - (p.get("tokens", 0) if p is not None else 0) if p is not None or r["step"] == 1
              else 0 for p, r in zip([None] + rows[:-1], rows)]  # a resumed file's first row: its step is unknown
    pairs = [(t, r["tokens_per_s"]) for t, r in zip(tokens, rows) if t > 0 and r.get("tokens_per_s")]
    return sum(t for t, _ in pairs) / max(sum(t / v for t, v in pairs), 1e-9)


def stage_summary(rows: list[dict]) -> list[dict]:
    """Per stage, in order: name, first/last step, first/last/min loss, LR range, tokens, mean tokens/s; for
    multimodal runs also the target share at the first/last step, the mean realized share, mean packing efficiency
    and the images seen (None for text-only runs)."""
    out: list[dict] = []
    for r in rows:
        if not out or out[-1]["stage"] != r["stage"]:
            out.append({"stage": r["stage"], "first_step": r["step"], "rows": []})
        out[-1]["rows"].append(r)
    for s in out:
        rs = s.pop("rows")
        s.update(last_step=rs[-1]["step"], first_loss=rs[0]["loss"], last_loss=rs[-1]["loss"],
                 min_loss=min(x["loss"] for x in rs), lr_max=max(x["lr"] for x in rs), lr_min=min(x["lr"] for x in rs),
                 tokens=rs[-1].get("tokens", 0), tokens_per_s=sum(x.get("tokens_per_s", 0) for x in rs) / len(rs),
                 trainable=rs[-1].get("trainable_params"), seq_length=rs[-1].get("seq_length"),
                 rope_base=rs[-1].get("rope_base"), mm_target=(rs[0].get("mm_ratio_target"),
                                                               rs[-1].get("mm_ratio_target")),
                 mm_ratio=_mean([x.get("mm_ratio") for x in rs]),
                 packing=_mean([x.get("packing_efficiency") for x in rs]),
                 images=sum(x.get("images", 0) for x in rs) if "images" in rs[0] else None)
    return out


def _plot(run_dir: Path, rows: list[dict], stages: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mm = any("mm_ratio" in r for r in rows)
    rewards = [k for k in ("reward_accuracy", "reward_mean") if any(k in r for r in rows)]  # DPO, GRPO
    steps = [r["step"] for r in rows]
    n = 2 + mm + bool(rewards)
    fig, axes = plt.subplots(n, 1, figsize=(9, 3 * n), sharex=True)
    ax_loss, ax_lr = axes[0], axes[1]
    ax_loss.plot(steps, [r["loss"] for r in rows], lw=1)
    ax_loss.set_ylabel("loss")
    ax_lr.plot(steps, [r["lr"] for r in rows], lw=1, color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    if mm:
        ax_mm = axes[2]
        ax_mm.plot(steps, [r.get("mm_ratio") for r in rows], lw=1, color="tab:green", label="realized (step)")
        ax_mm.plot(steps, [r.get("mm_ratio_target") for r in rows], lw=1.2, ls="--", color="black", label="target")
        ax_mm.set_ylabel("multimodal token share")
        ax_mm.set_ylim(-0.02, 1.02)
        ax_mm.legend(loc="upper left", fontsize=8)
    if rewards:
        ax_r = axes[2 + mm]
        labels = {"reward_accuracy": "DPO reward accuracy", "reward_mean": "GRPO mean reward"}
        for k, colour in zip(rewards, ("tab:red", "tab:purple")):
            ax_r.plot(steps, [r.get(k) for r in rows], lw=1, color=colour, label=labels[k])
        ax_r.set_ylabel("reward")
        ax_r.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("step")
    for s in stages:
        for ax in axes:
            ax.axvline(s["first_step"] - 0.5, color="grey", ls="--", lw=0.8)
        ax_loss.text(s["first_step"], ax_loss.get_ylim()[1], f" {s['stage']}", va="top", fontsize=8)
    fig.suptitle(f"{Path(run_dir).name}: {len(rows)} steps, {len(stages)} stages")
    fig.tight_layout()
    png = Path(run_dir) / "report.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _stage_row(s: dict, mm: bool) -> str:
    head = (f"| {s['stage']} | {s['first_step']}-{s['last_step']} | {s['first_loss']:.4f} -> {s['last_loss']:.4f} "
            f"({s['min_loss']:.4f}) | {s['lr_max']:.3g} / {s['lr_min']:.3g} | ")
    if s["trainable"] is not None:
        row = head + (f"{s['seq_length']} | {s['rope_base']} | {s['trainable']:,} | {s['tokens_per_s']:.0f} |")
    else:
        row = head + f"- | - | - | {s['tokens_per_s']:.0f} |"
    if mm:
        t0, t1 = s["mm_target"]
        target = "-" if t0 is None else f"{t0:.0%}" + (f" -> {t1:.0%}" if t1 is not None and t1 != t0 else "")
        pct = (lambda v: "-" if v is None else f"{v:.1%}")
        row += f" {target} | {pct(s['mm_ratio'])} | {s['images'] or 0:,} | {pct(s['packing'])} |"
    return row


OBJECTIVE_METRICS = ("dpo_loss", "nll_loss", "reward_accuracy", "reward_margin", "supervised_tokens",  # sft, dpo
                     "reward_mean", "kl", "response_length", "zero_advantage_groups")  # grpo


def _objectives_md(rows: list[dict], run_dir: Path) -> list[str]:
    """Per stage: its objective, the first and last 5 steps' means of the objective's own metrics, and the held-out
    exact match after the stage when it evaluated."""
    evals = {}
    path = Path(run_dir) / "eval.jsonl"
    if path.exists():
        evals = {e["stage"]: e for e in (json.loads(x) for x in path.read_text().splitlines() if x.strip())}
    stages: dict[str, list[dict]] = {}
    for r in rows:
        stages.setdefault(r["stage"], []).append(r)
    lines = ["", "## Objectives", "", "| stage | objective | metrics (first 5 steps -> last 5 steps) | held-out exact "
             "match |", "| --- | --- | --- | --- |"]
    for name, rs in stages.items():
        keys = [k for k in OBJECTIVE_METRICS if k in rs[0]]
        mean = (lambda xs, k: _mean([x.get(k) for x in xs]))
        fmt = (lambda v: f"{v:.3g}" if isinstance(v, float) else str(v))
        cells = ", ".join(f"{k} {fmt(mean(rs[:5], k))} -> {fmt(mean(rs[-5:], k))}" for k in keys) or "-"
        e = evals.get(name)
        lines.append(f"| {name} | {rs[0].get('objective', 'lm')} | {cells} | "
                     + (f"{e['exact_match']:.1%} of {e['n']} (step {e['step']})" if e else "-") + " |")
    return lines


def _captions_md(run_dir: Path) -> list[str]:
    path = Path(run_dir) / "captions.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    caps = data.get("captions", [])
    exact = sum(bool(c.get("exact")) for c in caps)
    lines = ["", f"## Greedy captions of held-out images (after step {data.get('step')}; {exact}/{len(caps)} exact)",
             "", "| sample | true | generated |", "| --- | --- | --- |"]
    esc = (lambda t: t.replace("|", "\\|").replace("\n", " "))
    lines += [f"| {c['key']} | {esc(c['true'])} | {esc(c['generated'])} |" for c in caps]
    return lines


def write_report(run_dir: Path) -> tuple[Path, Path]:
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl has no records")
    stages = stage_summary(rows)
    png = _plot(run_dir, rows, stages)
    mm = any("mm_ratio" in r for r in rows)
    md = Path(run_dir) / "report.md"
    lines = [f"# Run report: {Path(run_dir).name}", "", f"{len(rows)} steps, final loss {rows[-1]['loss']:.4f}, "
             f"{rows[-1].get('tokens', 0):,} tokens.", ""]
    if mm:
        pack = _mean([r.get("packing_efficiency") for r in rows if r.get("images") is not None])
        lines += [f"Throughput {throughput(rows):,.0f} tokens/s (tokens / training time over all steps); "
                  f"packing efficiency {pack:.1%} (non-pad tokens / capacity, mean over steps); "
                  f"{sum(r.get('images', 0) for r in rows):,} images, "
                  f"{sum(r.get('visual_tokens', 0) for r in rows):,} visual tokens.", ""]
    lines += ["![loss and LR](report.png)", ""]
    cols = ["stage", "steps", "loss first -> last (min)", "LR max / min", "seq", "RoPE base", "trainable", "tokens/s"]
    if mm:
        cols += ["mm share target", "mm share realized", "images", "packing"]
    lines += ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += [_stage_row(s, mm) for s in stages]
    lines += _objectives_md(rows, run_dir)
    lines += _captions_md(run_dir)
    md.write_text("\n".join(lines) + "\n")
    return png, md
