"""torchrun worker (2 ranks, gloo): the contrastive loss with its embeddings gathered over the data-parallel group
equals one rank holding the whole batch, in value and in the parameters' gradients.

Both ranks draw the same float64 features of B = 10 samples (two captions repeated, across the ranks) and the same
small linear heads; rank r takes samples [5r, 5r + 5). Each rank computes its micro-batch's loss with
`contrastive_terms` over the world group, backward, and the gradients are averaged over ranks (as megatron's DDP
does); the reference is the same function on the whole batch without a group. Writes {kind: {loss_err, grad_err,
grad_norm}} from rank 0."""

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from omni_mega.objectives.contrastive import contrastive_terms


def heads():
    g = torch.Generator().manual_seed(11)
    img = torch.nn.Linear(6, 4, dtype=torch.float64)
    txt = torch.nn.Linear(6, 4, dtype=torch.float64)
    with torch.no_grad():
        for p in list(img.parameters()) + list(txt.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    scale = torch.nn.Parameter(torch.tensor(2.5, dtype=torch.float64))
    bias = torch.nn.Parameter(torch.tensor(-0.7, dtype=torch.float64))
    return img, txt, scale, bias


def loss_and_grads(kind: str, rows: slice, group) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    b = 10
    xi = torch.randn(b, 6, generator=g, dtype=torch.float64)
    xt = torch.randn(b, 6, generator=g, dtype=torch.float64)
    keys = torch.tensor([0, 1, 2, 3, 1, 5, 6, 1, 8, 3])
    # every sample valid: a rank's loss is the mean over its own valid rows, so a rejected image would weigh its
    # rank's other rows more than the whole batch's mean does (the formula test covers rejected images)
    mask = torch.ones(b, dtype=torch.float64)
    img, txt, scale, bias = heads()
    out = {"image": F.normalize(img(xi[rows]), dim=-1), "text": F.normalize(txt(xt[rows]), dim=-1),
           "logit_scale": scale, "logit_bias": bias}
    loss = contrastive_terms(out, mask[rows], kind, group, keys[rows])["loss"]
    params = [*img.parameters(), *txt.parameters(), scale] + ([bias] if kind == "siglip" else [])
    return loss, list(torch.autograd.grad(loss, params))


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2
    res = {}
    for kind in ("siglip", "clip"):
        whole, want = loss_and_grads(kind, slice(0, 10), None)
        loss, grads = loss_and_grads(kind, slice(5 * rank, 5 * rank + 5), dist.group.WORLD)
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        loss /= world  # each rank's mean over its rows; megatron averages the ranks
        for gr in grads:
            dist.all_reduce(gr)
            gr /= world
        res[kind] = {"loss_err": float((loss - whole).abs()),
                     "grad_err": max(float((a - w).abs().max()) for a, w in zip(grads, want)),
                     "grad_norm": float(torch.sqrt(sum((w ** 2).sum() for w in want)))}
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(res, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
