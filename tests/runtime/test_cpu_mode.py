"""CPU mode rewrites CUDA device arguments to CPU and backs megatron's CUDA RNG tracker with the CPU generator.
It patches process-wide state, so it runs in a subprocess."""

import subprocess
import sys

import pytest
import torch

SCRIPT = r"""
import torch
from omni_mega.runtime import cpu_mode
cpu_mode.enable()
a = torch.empty(3, device="cuda"); b = torch.zeros(2, device=torch.device("cuda", 0))
c = torch.ones(2, device=torch.cuda.current_device()); d = torch.arange(4).cuda(); e = torch.ones(1).to("cuda")
assert all(t.device.type == "cpu" for t in (a, b, c, d, e)), [t.device for t in (a, b, c, d, e)]
assert torch.ones(1).type() == "torch.cuda.FloatTensor"

class Double(torch.autograd.Function):  # megatron's SP linears allocate like this inside backward
    @staticmethod
    def forward(ctx, x):
        return x * 2
    @staticmethod
    def backward(ctx, g):
        return g * 2 + torch.zeros(g.shape, device=torch.cuda.current_device())
x = torch.ones(3, requires_grad=True)
Double.apply(x).sum().backward()
assert x.grad.tolist() == [2.0, 2.0, 2.0], x.grad
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
tracker = get_cuda_rng_tracker()
tracker.reset(); tracker.add("model-parallel-rng", 7)
torch.manual_seed(0)
outside_before = torch.get_rng_state().clone()
with tracker.fork():
    x1 = torch.rand(4)
assert torch.equal(torch.get_rng_state(), outside_before), "fork must restore the default stream"
with tracker.fork():
    x2 = torch.rand(4)
assert not torch.equal(x1, x2), "the forked stream must advance"
tracker.reset(); tracker.add("model-parallel-rng", 7)
with tracker.fork():
    assert torch.equal(torch.rand(4), x1), "same seed, same model-parallel stream"
cpu_mode.disable()
import pytest
with pytest.raises(Exception):
    torch.empty(1, device="cuda")  # plain torch again: no CUDA on this machine
assert not cpu_mode.is_enabled()
print("OK")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU mode is only entered without CUDA")
def test_cpu_mode_devices_and_rng():
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-3000:]
