"""`omni-mega report RUN_DIR`: report.png (loss and LR over the whole run, stage boundaries marked) and report.md
(a table per stage) from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from omni_mega.training.metrics import read_metrics


def stage_summary(rows: list[dict]) -> list[dict]:
    """Per stage, in order: name, first/last step, first/last/min loss, LR range, tokens, mean tokens/s."""
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
                 rope_base=rs[-1].get("rope_base"))
    return out


def write_report(run_dir: Path) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl has no records")
    stages = stage_summary(rows)
    steps = [r["step"] for r in rows]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax_loss.plot(steps, [r["loss"] for r in rows], lw=1)
    ax_loss.set_ylabel("loss")
    ax_lr.plot(steps, [r["lr"] for r in rows], lw=1, color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    for s in stages:
        for ax in (ax_loss, ax_lr):
            ax.axvline(s["first_step"] - 0.5, color="grey", ls="--", lw=0.8)
        ax_loss.text(s["first_step"], ax_loss.get_ylim()[1], f" {s['stage']}", va="top", fontsize=8)
    fig.suptitle(f"{Path(run_dir).name}: {len(rows)} steps, {len(stages)} stages")
    fig.tight_layout()
    png = Path(run_dir) / "report.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    md = Path(run_dir) / "report.md"
    lines = [f"# Run report: {Path(run_dir).name}", "", f"{len(rows)} steps, final loss {rows[-1]['loss']:.4f}, "
             f"{rows[-1].get('tokens', 0):,} tokens.", "", "![loss and LR](report.png)", "",
             "| stage | steps | loss first -> last (min) | LR max / min | seq | RoPE base | trainable | tokens/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in stages:
        lines.append(f"| {s['stage']} | {s['first_step']}-{s['last_step']} | {s['first_loss']:.4f} -> "
                     f"{s['last_loss']:.4f} ({s['min_loss']:.4f}) | {s['lr_max']:.3g} / {s['lr_min']:.3g} | "
                     f"{s['seq_length']} | {s['rope_base']} | {s['trainable']:,} | {s['tokens_per_s']:.0f} |"
                     if s["trainable"] is not None else f"| {s['stage']} | {s['first_step']}-{s['last_step']} | "
                     f"{s['first_loss']:.4f} -> {s['last_loss']:.4f} ({s['min_loss']:.4f}) | {s['lr_max']:.3g} / "
                     f"{s['lr_min']:.3g} | - | - | - | {s['tokens_per_s']:.0f} |")
    md.write_text("\n".join(lines) + "\n")
    return png, md
