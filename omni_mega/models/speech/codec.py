"""RVQ codec over log-mel frames: what the Talker speaks in.

A codec frame is `frame_stack` consecutive log-mel frames of one clip (8 x 10 ms = 80 ms), flattened. An MLP encodes
it to a `dim`-vector, normalised without learned scale (LayerNorm without affine: the vectors keep unit scale per
dimension, so the N(0, 1) codebooks cover them from the first step and few entries are left unused); `codebooks`
residual quantisers each pick the nearest entry of what the ones before left, and an MLP decodes the sum back to the
frame. Training (`objective: rvq`): reconstruction MSE + codebook loss |sg(r) - e|^2 + commitment * |r - sg(e)|^2
per quantiser, gradients through the quantisation by the straight-through estimator (z + sg(q - z)).

Dead entries are restarted (`restart_dead`, called by the objective before each step): an exponential moving average
of each entry's share of the step's frames is kept in a buffer (saved with the checkpoint), and an entry whose share
fell below a fifth of uniform is moved onto one of the step's residual vectors, picked by a generator seeded by the
step. Without it the entries collapse within a step or two onto a few codes (2% of 128 used in the demo's first
steps); the objective broadcasts the codebooks from the first data-parallel rank after a restart, so replicas stay
equal, and a resumed run restarts the same entries.
Replicated on every TP rank (it is small).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from omni_mega.config.model import CodecConfig


def _mlp(inp: int, hidden: int, out: int, dtype: torch.dtype) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(inp, hidden, dtype=dtype), torch.nn.GELU(),
                               torch.nn.Linear(hidden, hidden, dtype=dtype), torch.nn.GELU(),
                               torch.nn.Linear(hidden, out, dtype=dtype))


class RVQCodec(torch.nn.Module):
    """Submodules: `encoder`, `decoder` (MLPs), `codebooks` [Q, K, dim]."""

    def __init__(self, cfg: CodecConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.cfg = cfg
        self.frame_features = cfg.n_mels * cfg.frame_stack
        self.encoder = _mlp(self.frame_features, cfg.hidden_size, cfg.dim, dtype)
        self.decoder = _mlp(cfg.dim, cfg.hidden_size, self.frame_features, dtype)
        g = torch.Generator().manual_seed(0)  # fixed: the same codebooks on every rank without a broadcast
        books = torch.randn(cfg.codebooks, cfg.codebook_size, cfg.dim, generator=g)
        # Each later quantiser sees a smaller residual: its entries start smaller (1, 1/2, 1/4, ...).
        books = books * (0.5 ** torch.arange(cfg.codebooks, dtype=torch.float32))[:, None, None]
        self.codebooks = torch.nn.Parameter(books.to(dtype))
        # Each entry's share of recent frames (EMA). It starts at 0, so the first restart moves nearly every entry
        # onto the first step's vectors: a data-dependent init (held-out usage 10% -> 57% after the demo's 80 steps
        # with a uniform start, which restarted only entries that had gone unused).
        self.register_buffer("usage_ema", torch.zeros(cfg.codebooks, cfg.codebook_size))

    def frames(self, mel: torch.Tensor, cu_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codec frames of packed clips: ([Fc, frame_stack * n_mels], cu int32 [N + 1]); a clip's trailing
        mel frames that do not fill a codec frame are left out."""
        k = self.cfg.frame_stack
        parts, counts = [], []
        for a, b in zip(cu_mel.tolist(), cu_mel.tolist()[1:]):
            n = (b - a) // k
            parts.append(mel[a:a + n * k].reshape(n, k * mel.size(1)))
            counts.append(n)
        cu = torch.zeros(len(counts) + 1, dtype=torch.int32, device=mel.device)
        cu[1:] = torch.cumsum(torch.tensor(counts, device=mel.device), 0)
        return torch.cat(parts), cu

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[Fc, frame features] -> unit-scale vectors [Fc, dim]."""
        z = self.encoder(x.to(self.codebooks.dtype))
        return F.layer_norm(z, (z.size(-1),))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(straight-through quantised z [Fc, dim], codes int64 [Fc, Q], codebook loss, commitment loss)."""
        residual, total = z, torch.zeros_like(z)
        codes, book_loss, commit_loss = [], z.new_zeros(()), z.new_zeros(())
        for book in self.codebooks:
            dist = residual.detach().pow(2).sum(1, keepdim=True) - 2 * residual.detach() @ book.T + \
                book.pow(2).sum(1)[None]
            idx = dist.argmin(1)
            e = book[idx]
            book_loss = book_loss + F.mse_loss(e, residual.detach())
            commit_loss = commit_loss + F.mse_loss(residual, e.detach())
            codes.append(idx)
            total = total + e
            residual = residual - e.detach()
        return z + (total - z).detach(), torch.stack(codes, 1), book_loss, commit_loss

    @staticmethod
    def _nearest(residual: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
        return (residual.pow(2).sum(1, keepdim=True) - 2 * residual @ book.T + book.pow(2).sum(1)[None]).argmin(1)

    @torch.no_grad()
    def restart_dead(self, mel: torch.Tensor, cu_mel: torch.Tensor, generator: torch.Generator,
                     decay: float = 0.8, dead: float = 0.2) -> int:
        """Updates the usage EMA with these clips' codes and moves entries used less than `dead` / K of the time
        onto residual vectors of these clips (chosen with `generator`). Returns the entries moved."""
        x, _ = self.frames(mel, cu_mel)
        if x.size(0) == 0:
            return 0
        residual, moved, k = self.embed(x), 0, self.cfg.codebook_size
        for q in range(self.cfg.codebooks):
            book = self.codebooks.data[q]
            idx = self._nearest(residual, book)
            share = torch.bincount(idx, minlength=k).to(self.usage_ema.dtype) / idx.numel()
            self.usage_ema[q] = decay * self.usage_ema[q] + (1 - decay) * share
            rows = torch.nonzero(self.usage_ema[q] < dead / k).flatten()
            if rows.numel():
                pick = torch.randint(0, residual.size(0), (rows.numel(),), generator=generator)
                book[rows] = residual[pick.to(residual.device)].to(book.dtype)
                self.usage_ema[q, rows] = 1.0 / k
                moved += rows.numel()
                idx = self._nearest(residual, book)
            residual = residual - book[idx]
        return moved

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """int [Fc, Q] codes -> the summed code vectors [Fc, dim]."""
        return sum(self.codebooks[q][codes[:, q]] for q in range(codes.size(1)))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """int [Fc, Q] -> reconstructed codec frames [Fc, frame_stack * n_mels]."""
        return self.decoder(self.lookup(codes))

    @torch.no_grad()
    def encode(self, mel: torch.Tensor, cu_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes of packed clips: (int64 [Fc, Q], cu int32 [N + 1])."""
        x, cu = self.frames(mel, cu_mel)
        return self.quantize(self.embed(x))[1], cu

    def forward(self, mel: torch.Tensor, cu_mel: torch.Tensor) -> dict:
        """Training pass: {"target", "recon" [Fc, frame features], "codes" [Fc, Q], "codebook_loss",
        "commit_loss", "cu"}."""
        x, cu = self.frames(mel, cu_mel)
        zq, codes, book, commit = self.quantize(self.embed(x))
        return {"target": x, "recon": self.decoder(zq), "codes": codes, "codebook_loss": book,
                "commit_loss": commit, "cu": cu}

    def unstack(self, frames: torch.Tensor) -> torch.Tensor:
        """[Fc, frame_stack * n_mels] codec frames -> [Fc * frame_stack, n_mels] log-mel frames."""
        return frames.reshape(-1, self.cfg.n_mels)
