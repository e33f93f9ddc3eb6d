import pytest
import torch

from omni_mega.runtime.env import detect, first_slurm_host


@pytest.mark.parametrize("nodelist,first", [
    ("gpu[003-005,007]", "gpu003"), ("node7,node8", "node7"), ("a100-[12-13]", "a100-12"), ("solo", "solo"),
    ("h100-dgx[0017,0020-0022],cpu1", "h100-dgx0017"),
])
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_detect_torchrun_env():
    e = detect({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.master_port, e.launcher) == (3, 8, 1, "n1", 1234, "torchrun")


def test_detect_slurm_env():
    e = detect({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_NODELIST": "gpu[010-011]"})
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.launcher) == (5, 16, 5, "gpu010", "slurm")


def test_detect_single_process():
    e = detect({})
    assert (e.rank, e.world_size, e.launcher) == (0, 1, "single")


def test_capabilities_probe_reports_extension():
    from omni_mega.ops import has_cpu_extension
    from omni_mega.runtime import probe

    caps = probe()
    assert caps.cuda == torch.cuda.is_available()
    assert caps.extension_cpu == has_cpu_extension()
    assert "megatron-core" in caps.summary()
