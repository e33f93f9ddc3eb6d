"""What `omni-mega demo --audio` shows after the μOmni jobs train: speech from the Talker, the codec's reconstruction
of held-out speech, held-out transcriptions by the omni model, and one report over the whole graph.

After job D (codec + Talker): for the first held-out utterances, the codec's reconstruction (clip -> codes ->
mel -> Griffin-Lim) and the Talker speaking the transcript (text -> codes -> mel -> Griffin-Lim) go to
`<root>/speech/*.wav`, with the codec's reconstruction MSE over the held-out clips. After job E (omni SFT): the omni
model transcribes held-out clips greedily through the LLM (`[AUD] * n + SEP` -> text until EOD) and captions
held-out images. `report()` writes `<root>/report.md` and `report.png`: the jobs, CER/WER per step of the ASR stage,
the codec's and the Talker's curves, the stage-E losses and those outputs. Rank 0 of a one-chunk layout does the
generation (tp = pp = 1); other layouts get the report without it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from omni_mega.config import RunConfig
from omni_mega.training.metrics import read_metrics

log = logging.getLogger(__name__)
SPEAK = 3  # held-out utterances spoken and reconstructed
TRANSCRIBE = 8  # held-out clips transcribed by the omni model


def _cer(hyp: str, ref: str) -> float:
    from omni_mega.objectives.parts import edit_distance

    return edit_distance(hyp, ref) / max(len(ref), 1)


class DemoOutputs:
    def __init__(self, cfg: RunConfig, root: Path) -> None:
        self.cfg, self.root = cfg, Path(root)
        self.out = self.root / "outputs.json"

    def _save(self, key: str, value) -> None:
        data = json.loads(self.out.read_text()) if self.out.exists() else {}
        data[key] = value
        self.out.write_text(json.dumps(data, indent=1))

    def after_job(self, name: str, trainer, rt) -> None:
        if trainer is None or not rt.is_rank0:
            return
        par = trainer.cfg.parallel
        if par.tp != 1 or par.pp != 1 or par.vpp is not None:
            log.info("demo outputs need tp = pp = 1 (one model chunk); skipped for job %s", name)
            return
        model = trainer.chunks[0]
        if getattr(model, "talker", None) is not None and name != "E":
            self._save("speech", self.speak(model, trainer))
        if getattr(model, "audio", None) is not None and getattr(model, "audio_projector", None) is not None \
                and any(d.source in ("demo_audio", "audio_shards") for p in trainer.plans for d in p.mix
                        if p.objective == "lm"):
            self._save("transcripts", self.transcribe(model, trainer))
            if model.vit is not None:
                from omni_mega.data.demo.scenes import build_demo_data
                from omni_mega.training.generate import write_captions

                path = write_captions(trainer, build_demo_data(trainer.data_dir)["heldout"], 4)
                self._save("captions", json.loads(path.read_text())["captions"])

    @torch.no_grad()
    def speak(self, model, trainer) -> dict:
        """Codec reconstructions and Talker speech of held-out utterances as WAV files."""
        from omni_mega.data.audio.shards import AudioShardDataset
        from omni_mega.data.demo.speech import build_demo_speech, wav_bytes
        from omni_mega.data.task_source import clips_batch
        from omni_mega.ops.griffin_lim import mel_to_audio

        was = model.training
        model.eval()
        ds = AudioShardDataset(build_demo_speech(trainer.data_dir)["heldout"])
        codec, talker = model.codec, model.talker
        out_dir = self.root / "speech"
        out_dir.mkdir(parents=True, exist_ok=True)
        rows, errs = [], []
        for i in range(min(SPEAK, len(ds))):
            mb = clips_batch("talker", [ds[i]], codec.cfg.n_mels)
            mel, cu = mb["audio_features"], mb["audio_cu_seqlens"]
            codes, _ = codec.encode(mel, cu)
            target, _ = codec.frames(mel, cu)
            recon = codec.decode(codes)
            errs.append(float(torch.nn.functional.mse_loss(recon.float(), target.float())))
            spoken = talker.generate(mb["text"], max_frames=4 * max(len(mb["text"]), 8))
            files = {}
            for tag, frames in (("original", target), ("codec", recon), ("talker", codec.decode(spoken)
                                                                          if len(spoken) else None)):
                if frames is None:
                    continue
                wave = mel_to_audio(codec.unstack(frames.float()))
                path = out_dir / f"{i:02d}_{tag}.wav"
                path.write_bytes(wav_bytes(wave.numpy()))
                files[tag] = str(path.relative_to(self.root))
            rows.append({"text": ds.text(i), "codec_frames": int(codes.size(0)), "talker_frames": int(len(spoken)),
                         "recon_mse": errs[-1], "files": files})
        model.train(was)
        return {"step": trainer.state.step, "recon_mse": float(np.mean(errs)), "utterances": rows}

    @torch.no_grad()
    def transcribe(self, model, trainer) -> dict:
        """Greedy transcriptions of held-out clips by the omni model: `[AUD] * n + SEP` -> text until EOD."""
        from omni_mega.data.audio.shards import AudioShardDataset
        from omni_mega.data.demo import text as demo_text
        from omni_mega.data.demo.speech import build_demo_speech
        from omni_mega.data.task_source import clips_batch

        was = model.training
        model.eval()
        a = trainer.cfg.model.audio
        ds = AudioShardDataset(build_demo_speech(trainer.data_dir)["heldout"])
        rows = []
        for i in range(min(TRANSCRIBE, len(ds))):
            mb = clips_batch("ctc", [ds[i]], a.n_mels)
            mel, cu = mb["audio_features"], mb["audio_cu_seqlens"]
            n = a.llm_tokens(int(cu[1]))
            ids = [a.audio_token_id] * n + [10]  # SEP: byte "\n", as the packer lays out the demo's samples
            out: list[int] = []
            for _ in range(48):
                x = torch.tensor([ids + out])
                logits = model(x, torch.arange(x.size(1))[None], None, audio_features=mel, audio_cu_seqlens=cu)
                nxt = int(logits[0, -1, :demo_text.VOCAB_SIZE].argmax())
                if nxt == demo_text.EOD:
                    break
                out.append(nxt)
            hyp, ref = demo_text.decode(out), ds.text(i)
            rows.append({"true": ref, "generated": hyp, "cer": _cer(hyp, ref)})
        model.train(was)
        return {"step": trainer.state.step, "cer": float(np.mean([r["cer"] for r in rows])), "clips": rows}

    # ---- the report -------------------------------------------------------------------------------------------
    def report(self) -> Path:
        return write_graph_report(self.root, self.cfg)


def _job_rows(root: Path, cfg: RunConfig) -> dict[str, list[dict]]:
    from omni_mega.config.graph import jobs

    out = {}
    for j in jobs(cfg):
        path = root / j / "metrics.jsonl"
        out[j] = read_metrics(root / j) if path.exists() else []
    return out


def _plot(root: Path, rows: dict[str, list[dict]]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    panels = [("A: Thinker (lm)", rows.get("A", []), "loss", None),
              ("B: ASR (ctc): held-out CER / WER", rows.get("B", []), "cer", "wer"),
              ("C: vision (classify): accuracy", rows.get("C", []), "accuracy", "heldout_accuracy"),
              ("D: codec (rvq): reconstruction MSE", [r for r in rows.get("D", []) if r["objective"] == "rvq"],
               "recon_mse", "heldout_recon_mse"),
              ("D: Talker: code cross entropy", [r for r in rows.get("D", []) if r["objective"] == "talker"],
               "loss", "heldout_ce"),
              ("E: omni SFT (lm)", rows.get("E", []), "loss", None)]
    for ax, (title, rs, a, b) in zip(axes.flat, panels):
        ax.set_title(title, fontsize=9)
        for key, style in ((a, "-"), (b, "--")):
            pts = [(r["step"], r[key]) for r in rs if key and isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), style, lw=1, label=key)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = root / "report.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def write_graph_report(root: Path, cfg: RunConfig) -> Path:
    """report.md (+ report.png) over every job of a stage graph run in `root`."""
    from omni_mega.config.graph import dependencies, jobs

    root = Path(root)
    rows, deps = _job_rows(root, cfg), dependencies(cfg)
    outputs = json.loads((root / "outputs.json").read_text()) if (root / "outputs.json").exists() else {}
    png = _plot(root, rows)
    lines = [f"# {cfg.name}: stage graph report", "", "| job | stages | after | steps | loss first -> last |",
             "| --- | --- | --- | --- | --- |"]
    for j, stages in jobs(cfg).items():
        rs = rows.get(j, [])
        loss = f"{rs[0]['loss']:.4f} -> {rs[-1]['loss']:.4f}" if rs else "not run"
        lines.append(f"| {j} | {', '.join(f'{s.name} ({s.objective})' for s in stages)} | "
                     f"{', '.join(deps[j]) or '-'} | {len(rs)} | {loss} |")
    if png is not None:
        lines += ["", "![curves](report.png)"]
    asr = [r for r in rows.get("B", []) if "cer" in r]
    if asr:
        lines += ["", "## B: speech recognition (CTC), held-out CER / WER per step", "",
                  "| step | train loss | train CER | held-out CER | held-out WER | measured after step |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['step']} | {r['loss']:.3f} | {r.get('train_cer', float('nan')):.1%} | {r['cer']:.1%} | "
                  f"{r['wer']:.1%} | {int(r['eval_step'])} |" for r in asr]
    codec = [r for r in rows.get("D", []) if r.get("objective") == "rvq"]
    talk = [r for r in rows.get("D", []) if r.get("objective") == "talker"]
    if codec:
        last = codec[-1]
        lines += ["", "## D: RVQ codec and Talker", "",
                  f"Codec reconstruction MSE (log-mel units): {codec[0]['recon_mse']:.4f} -> {last['recon_mse']:.4f}"
                  f" (train), held-out {last.get('heldout_recon_mse', float('nan')):.4f}; codebook usage on the "
                  f"held-out clips {last.get('heldout_usage', float('nan')):.0%} of the entries."]
    if talk:
        lines.append(f"Talker code cross entropy: {talk[0]['loss']:.3f} -> {talk[-1]['loss']:.3f} (train), held-out "
                     f"{talk[-1].get('heldout_ce', float('nan')):.3f}; code accuracy {talk[-1]['code_accuracy']:.1%}.")
    speech = outputs.get("speech")
    if speech:
        lines += ["", f"Speech (Griffin-Lim over the mel frames, 16 kHz WAV; codec reconstruction MSE on these "
                      f"{len(speech['utterances'])} clips {speech['recon_mse']:.4f}):", "",
                  "| text | original | codec | Talker |", "| --- | --- | --- | --- |"]
        for u in speech["utterances"]:
            f = u["files"]
            lines.append(f"| {u['text']} | {f.get('original', '-')} | {f.get('codec', '-')} | "
                         f"{f.get('talker', '-')} ({u['talker_frames']} frames) |")
    omni = rows.get("E", [])
    if omni:
        lines += ["", "## E: omni SFT (frozen encoders, codec and Talker; LLM and projectors trained)", "",
                  "| step | loss | multimodal share |", "| --- | --- | --- |"]
        lines += [f"| {r['step']} | {r['loss']:.4f} | {r.get('mm_ratio', float('nan')):.0%} |"
                  for r in omni if r["step"] % max(1, len(omni) // 10) == 0 or r is omni[-1]]
    tr = outputs.get("transcripts")
    if tr:
        lines += ["", f"Held-out clips transcribed by the omni model through the LLM (mean CER {tr['cer']:.1%}):",
                  "", "| true | generated | CER |", "| --- | --- | --- |"]
        lines += [f"| {c['true']} | {c['generated']} | {c['cer']:.0%} |" for c in tr["clips"]]
    caps = outputs.get("captions")
    if caps:
        lines += ["", "Held-out images captioned by the omni model:", "", "| true | generated |", "| --- | --- |"]
        lines += [f"| {c['true']} | {c['generated']} |" for c in caps]
    md = root / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return md
