"""Fuzz worker for tests/faults/test_ops_fuzz.py: calls each op with extreme integers on every CPU backend.

Run as `python -m tests.faults.ops_fuzz_worker SEED CASES [OP:K]`: for every op (from case K of op OP on) it prints
`START op k` before a case and one JSON line after it, with each backend's outcome and a verdict. A kernel that
crashes the process leaves a START line with no result after it; the parent test reports that case and starts a
new worker after it.

Cases are drawn from a seeded generator, so a case is the same in every worker. Integers come from a pool of
extremes (0, +-1, +-2, INT32 and INT64 limits and their neighbours, 2^32, 2^62) mixed with small valid values, so
some calls succeed and most products of two pool values either fit easily or pass any memory this machine has.
The address space is capped (RLIMIT_AS): an output too large to allocate is a clean error in both backends.
"""

from __future__ import annotations

import json
import random
import re
import resource
import sys

import torch

from omni_mega import ops

I32, I64 = 2**31 - 1, 2**63 - 1
BASES = [0, 2**31, -(2**31), 2**32, 2**62, I64 - 2, -I64 + 1, I64 // 3]
ALLOWED = (RuntimeError, ValueError)
ADDRESS_SPACE = 4 << 30
ALLOC_ERROR = re.compile(r"alloc|memory|bad_alloc", re.IGNORECASE)


def extreme(rng: random.Random, lo: int = -(2**63), hi: int = I64) -> int:
    """An integer at or next to a limit, inside [lo, hi]."""
    return max(lo, min(hi, rng.choice(BASES) + rng.randint(-2, 2)))


def pick(rng: random.Random, valid, p_extreme: float = 0.3, lo: int = -(2**63), hi: int = I64) -> int:
    """A valid value (from the list) most of the time, an extreme integer otherwise."""
    return extreme(rng, lo, hi) if rng.random() < p_extreme else rng.choice(valid)


def int_tensor(rows: list, rng: random.Random) -> torch.Tensor:
    """int64, or int32 when every value fits and a coin says so (both dtypes are accepted)."""
    fits = all(-(2**31) <= v <= I32 for row in rows for v in (row if isinstance(row, list) else [row]))
    return torch.tensor(rows, dtype=torch.int32 if fits and rng.random() < 0.3 else torch.int64)


# ---------------------------------------------------------------------------------------------------- case makers
# Each returns (args, call) with call(args, backend) -> a tuple of tensors.


def case_vision_positions(rng):
    m = pick(rng, [1, 2], 0.15)
    n = rng.choice([0, 1, 2, 3])
    grid = [[pick(rng, [1, 2]), pick(rng, [2, 4, 6]), pick(rng, [2, 4])] for _ in range(n)]
    g = int_tensor(grid, rng).reshape(n, 3)
    return (g, m), lambda a, b: ops.vision_positions(a[0], a[1], backend=b)


def case_rope_2d(rng):
    t, h, d = rng.choice([0, 1, 5]), rng.choice([1, 2]), rng.choice([4, 8, 12, 6])
    dtype = rng.choice([torch.float32, torch.float64])
    x = torch.randn(t, h, d, dtype=dtype)
    pos = torch.tensor([[pick(rng, [0, 1, 7], 0.4, -(2**31), I32) for _ in range(2)] for _ in range(t)],
                       dtype=torch.int32).reshape(t, 2)
    rotary = rng.choice([None, 4, d, pick(rng, [8], 1.0)])
    theta = rng.choice([10000.0, 1.0, 0.0, -1.0, float("nan"), float("inf"), 1e-300, 1e300, 5e-324])
    layout = rng.choice(["half", "interleaved", "half", "interleaved", "diagonal"])
    kw = dict(theta=theta, layout=layout, rotary_dim=rotary)
    return (x, pos, kw), lambda a, b: (ops.rope_2d(a[0], a[1], backend=b, **a[2]),)


def case_vet(rng):
    n, vt, d = rng.choice([0, 1, 3]), rng.choice([0, 1, 4]), rng.choice([1, 3])
    n_ind = pick(rng, [0, 1, 2], 0.4)
    rows = max(0, vt + min(max(n_ind, 0), 2))
    table = torch.randn(rows, d, dtype=torch.float64, requires_grad=True)
    blocks = dict(block_n=pick(rng, [0, 1, 2], 0.5), block_v=pick(rng, [0, 1, 3], 0.5))
    if rng.random() < 0.5:
        logits = torch.randn(n, vt, dtype=torch.float64, requires_grad=True)
        return (logits, table, n_ind, blocks), _vet_embed
    x = torch.randn(n, 2, dtype=torch.float64, requires_grad=True)
    head = [torch.randn(vt, 2, dtype=torch.float64), torch.rand(vt, dtype=torch.float64) + 0.5,
            torch.randn(vt, dtype=torch.float64)]
    return (x, [t.requires_grad_() for t in head], table, n_ind, blocks), _visual_head_vet


def _vet_embed(a, backend):
    logits, table, n_ind, blocks = a
    blocks = blocks if backend != "ref" else {}
    out = ops.vet_embed(logits, table, num_indicators=n_ind, backend=backend, **blocks)
    return (out, *torch.autograd.grad(out.sum(), [logits, table], allow_unused=True))


def _visual_head_vet(a, backend):
    x, head, table, n_ind, blocks = a
    blocks = blocks if backend != "ref" else {}
    out = ops.visual_head_vet(x, *head, table, num_indicators=n_ind, backend=backend, **blocks)
    return (out, *torch.autograd.grad((out * out).sum(), [x, *head, table], allow_unused=True))


def case_pack_images(rng):
    n = rng.choice([0, 1, 2])
    sizes = [[pick(rng, [28, 56], 0.2), pick(rng, [28, 56], 0.2)] for _ in range(n)]
    exact = sum(h * w * 3 for h, w in sizes if 0 < h <= 56 and 0 < w <= 56)
    data = torch.randint(0, 256, (rng.choice([exact, exact, max(0, exact - 1), 0]),), dtype=torch.uint8)
    offsets = None
    if rng.random() < 0.5:
        offsets = int_tensor([pick(rng, [0, 2352], 0.5) for _ in range(n)], rng)
    kw = dict(patch_size=pick(rng, [14, 14, 7, 1], 0.15), merge_size=pick(rng, [2, 1], 0.15),
              temporal_patch_size=pick(rng, [2, 1], 0.15))
    s = int_tensor(sizes, rng).reshape(n, 2)
    return (data, s, offsets, kw), lambda a, b: tuple(ops.pack_images(a[0], a[1], offsets=a[2], backend=b, **a[3]))


def case_resize_images(rng):
    n, c = rng.choice([0, 1, 2]), pick(rng, [1, 3], 0.15)
    sizes = [[pick(rng, [1, 2, 5], 0.2), pick(rng, [1, 3, 4], 0.2)] for _ in range(n)]
    out_sizes = [[pick(rng, [1, 2, 6], 0.2), pick(rng, [1, 4, 7], 0.2)] for _ in range(n)]
    exact = sum(h * w * max(c, 0) for h, w in sizes if 0 < h <= 5 and 0 < w <= 5)
    data = torch.randint(0, 256, (min(rng.choice([exact, exact, max(0, exact - 1), 0]), 4096),), dtype=torch.uint8)
    offsets = None
    if rng.random() < 0.5:
        offsets = int_tensor([pick(rng, [0, 3], 0.5) for _ in range(n)], rng)
    s, o = int_tensor(sizes, rng).reshape(n, 2), int_tensor(out_sizes, rng).reshape(n, 2)
    return (data, s, offsets, o, c), lambda a, b: tuple(
        ops.resize_images(a[0], a[3], sizes=a[1], offsets=a[2], channels=a[4], backend=b))


def case_host_cache(rng):
    """Outputs of 1..4 MiB go through the recycling pool: allocate, free and reuse blocks of varied sizes."""
    if rng.random() < 0.5:
        side = 28 * rng.choice([8, 9, 10, 12])  # 256..576 tokens x 1176 float32 features: 1.2..2.7 MB
        img = torch.randint(0, 256, (side, side + 28 * rng.choice([0, 1]), 3), dtype=torch.uint8)
        return (img,), lambda a, b: tuple(ops.pack_images([a[0]], backend=b))
    img = torch.randint(0, 256, (rng.choice([3, 17]), rng.choice([5, 9]), 3), dtype=torch.uint8)
    out = [rng.choice([600, 640]), rng.choice([600, 630])]
    return (img, out), lambda a, b: tuple(ops.resize_images([a[0]], [a[1]], backend=b))


# The host-cache cases run the reference on megabyte images (~0.3 s each): fewer of them.
MAX_CASES = {"host_cache": 16}

CASES = {
    "vision_positions": case_vision_positions,
    "rope_2d": case_rope_2d,
    "vet": case_vet,
    "pack_images": case_pack_images,
    "resize_images": case_resize_images,
    "host_cache": case_host_cache,
}


# --------------------------------------------------------------------------------------------------------- verdict


def run(call, args, backend):
    try:
        return "ok", call(args, backend)
    except Exception as e:  # noqa: BLE001 - the type is judged by the verdict
        return "raised", e


def same_results(a: tuple, b: tuple) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x is None or y is None:
            if (x is None) != (y is None):
                return False
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.is_floating_point():
            if not torch.allclose(x, y, rtol=1e-5, atol=1e-5, equal_nan=True):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def first_clause(e: BaseException) -> str:
    """The check that fired: the first line up to ', got' (shapes and dtypes print differently in Python and C++)."""
    line = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return line.split(", got")[0]


def verdict(ref, cpp) -> str:
    (rk, rv), (ck, cv) = ref, cpp
    for name, (kind, value) in (("ref", ref), ("cpp", cpp)):
        if kind == "raised" and not isinstance(value, ALLOWED):
            return f"{name} raised {type(value).__name__} (not RuntimeError/ValueError): {value}"
    if rk == ck == "ok":
        return "ok" if same_results(rv, cv) else "results differ"
    if rk == ck == "raised":
        if ALLOC_ERROR.search(str(rv)) or ALLOC_ERROR.search(str(cv)) or first_clause(rv) == first_clause(cv):
            return "ok"
        return f"messages differ: ref {first_clause(rv)!r} vs cpp {first_clause(cv)!r}"
    return f"ref {rk}, cpp {ck}: " + str(rv if rk == "raised" else cv).splitlines()[0]


def describe(v) -> str:
    return f"{type(v).__name__}: {str(v).strip().splitlines()[0] if str(v).strip() else ''}"[:300]


def main() -> None:
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    start_op, start_k = (sys.argv[3].split(":") + ["0"])[:2] if len(sys.argv) > 3 else (None, "0")
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    names = list(CASES)
    first = names.index(start_op) if start_op else 0
    for op in names[first:]:
        rng = random.Random(f"{seed}-{op}")
        for k in range(min(count, MAX_CASES.get(op, count))):
            torch.manual_seed(seed * 1_000_003 + names.index(op) * 10_007 + k)  # the same tensors after a restart
            args, call = CASES[op](rng)
            if op == start_op and k < int(start_k):
                continue
            print(f"START {op} {k}", flush=True)
            ref, cpp = run(call, args, "ref"), run(call, args, "cpp")
            row = dict(op=op, k=k, ref=ref[0] if ref[0] == "ok" else describe(ref[1]),
                       cpp=cpp[0] if cpp[0] == "ok" else describe(cpp[1]), verdict=verdict(ref, cpp))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
