"""`objective: ctc`: the audio encoder trained for speech recognition with CTC (μOmni's stage B).

The encoder's 50 Hz states go through the CTC head (model.audio.ctc_vocab_size classes + the blank, whose id is
ctc_vocab_size); per clip the CTC loss of its transcript ids (`torch.nn.functional.ctc_loss`, zero_infinity: a clip
with more labels than frames adds 0, not inf; the data path already skips those, counted). Normalisation: the sum
of the clip losses over the global batch divided by the transcript tokens in it (megatron's per-token loss), so the
loss is per target token whatever the packing.

Metrics: `loss`; `train_cer` (greedy decoding of the step's own clips); on the held-out split (`eval`), greedy CTC
decoding (argmax per frame, repeats merged, blanks dropped) scored against the transcripts as text: `cer` (character
edit distance / reference characters), `wer` (word edit distance / reference words), with `eval_step`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from omni_mega.objectives.base import Objective, StageContext, metric
from omni_mega.objectives.parts import HeldOut, decoder_of, edit_distance


def packed_ctc_loss(logits: torch.Tensor, cu: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor,
                    blank: int) -> torch.Tensor:
    """Sum over clips of the CTC loss. logits [T, C] (clips back to back, bounds cu int [N + 1]), targets int64
    [sum L] (concatenated), target_lengths int64 [N]. Computed in float32 over a padded [T_max, N, C] batch."""
    lengths = (cu[1:] - cu[:-1]).long()
    n, longest = lengths.numel(), int(lengths.max())
    logp = F.log_softmax(logits.float(), dim=-1)
    padded = logp.new_zeros(longest, n, logp.size(1))
    t = torch.arange(logp.size(0), device=logp.device) - torch.repeat_interleave(cu[:-1].long(), lengths)
    clip = torch.repeat_interleave(torch.arange(n, device=logp.device), lengths)
    padded = padded.index_put((t, clip), logp)
    return F.ctc_loss(padded, targets, lengths, target_lengths, blank=blank, reduction="sum", zero_infinity=True)


def greedy_decode(logits: torch.Tensor, cu: torch.Tensor, blank: int) -> list[list[int]]:
    """Best path per clip: argmax per frame, repeats merged, blanks dropped."""
    best = logits.argmax(-1).tolist()
    out = []
    for a, b in zip(cu.tolist(), cu.tolist()[1:]):
        ids, prev = [], None
        for x in best[a:b]:
            if x != prev and x != blank:
                ids.append(x)
            prev = x
        out.append(ids)
    return out


def split_targets(targets: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    flat, out, at = targets.tolist(), [], 0
    for n in lengths.tolist():
        out.append(flat[at:at + n])
        at += n
    return out


def error_counts(hyps: list[list[int]], refs: list[list[int]], decode) -> dict[str, float]:
    """Character and word edit distances of decoded hypotheses against references, and the reference sizes."""
    c = {"char_errors": 0.0, "chars": 0.0, "word_errors": 0.0, "words": 0.0}
    for h, r in zip(hyps, refs):
        ht, rt = decode(h), decode(r)
        c["char_errors"] += edit_distance(ht, rt)
        c["chars"] += len(rt)
        c["word_errors"] += edit_distance(ht.split(), rt.split())
        c["words"] += len(rt.split())
    return c


def _forward(batch_loss, data_iterator, model):
    batch = next(data_iterator)
    out = model(None, None, task="ctc", audio_features=batch["audio_features"],
                audio_cu_seqlens=batch["audio_cu_seqlens"])
    return out, partial(batch_loss, batch)


class CTCObjective(Objective):
    name = "ctc"
    per_token_loss = True  # the sum of clip losses over the global batch / its transcript tokens

    def __init__(self, plan) -> None:
        self.plan = plan
        self.blank = None
        self.decode = decoder_of({"kind": "byte"})
        self.heldout = HeldOut(("cer", "wer"))
        self.metric_names = ("loss", "train_cer")

    def _blank(self, logits: torch.Tensor) -> int:
        return logits.size(-1) - 1  # the head's last class (ctc_vocab_size)

    def _loss(self, batch: dict, out):
        logits, cu = out
        blank = self._blank(logits)
        loss = packed_ctc_loss(logits, cu, batch["targets"], batch["target_lengths"], blank)
        n = batch["target_lengths"].sum()
        with torch.no_grad():
            refs = split_targets(batch["targets"], batch["target_lengths"])
            c = error_counts(greedy_decode(logits.detach(), cu, blank), refs, self.decode)
        values = {"loss": metric(loss, n.double()), "train_cer": metric(torch.tensor(c["char_errors"]), c["chars"]),
                  **self.heldout.values(logits.device)}
        return loss, n.to(torch.int), values

    def _score(self, batch: dict, out):
        logits, cu = out
        refs = split_targets(batch["targets"], batch["target_lengths"])
        c = error_counts(greedy_decode(logits.detach(), cu, self._blank(logits)), refs, self.decode)
        zero = logits.sum() * 0.0
        return zero, {"cer": metric(torch.tensor(c["char_errors"]), c["chars"]),
                      "wer": metric(torch.tensor(c["word_errors"]), c["words"])}

    def forward_step(self, data_iterator, model):
        return _forward(self._loss, data_iterator, model)

    def start_stage(self, ctx: StageContext) -> None:
        if self.heldout.prepare(ctx):
            self.decode = decoder_of(self.heldout.dataset.tokenizer)
            self.metric_names = ("loss", "train_cer", "cer", "wer", "eval_step")

    def before_step(self, ctx: StageContext, batches: list[dict]) -> None:
        self.heldout.before_step(ctx, partial(_forward, self._score))
