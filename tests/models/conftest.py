import os

import pytest


@pytest.fixture(scope="package")
def megatron_single():
    """megatron-core parallel state for one process (TP=PP=1, gloo; CPU mode without CUDA), torn down after
    tests/models."""
    from omni_mega.config import ParallelConfig
    from omni_mega.runtime import init_distributed, shutdown
    from tests.distributed.launch import free_port

    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(free_port())
    rt = init_distributed(ParallelConfig(), seed=1234)
    yield rt
    shutdown()
    for k, v in saved.items():  # later tests and their subprocesses must not inherit this rendezvous
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
