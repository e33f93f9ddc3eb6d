import os

import pytest


@pytest.fixture(scope="package")
def megatron_single():
    """megatron-core parallel state for one process (TP=PP=1, gloo; CPU mode without CUDA), torn down after
    tests/interop."""
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


ARCHS = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
         "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration", "LlavaForConditionalGeneration"]
VL_ARCHS = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration", "LlavaForConditionalGeneration")


@pytest.fixture(scope="package")
def imported(tmp_path_factory):
    """arch -> (HF model, HF dir, imported checkpoint dir) for every supported architecture (tiny, random)."""
    pytest.importorskip("transformers")
    from omni_mega.interop import import_hf
    from tests.interop.hf_models import save

    root = tmp_path_factory.mktemp("hf")
    out = {}
    for arch in ARCHS:
        hf_dir, ck = root / arch, root / f"{arch}.ckpt"
        # Llama sharded (with the index file) so the sharded reader path is covered
        model = save(arch, hf_dir, max_shard_size="100KB" if arch == "LlamaForCausalLM" else None)
        import_hf(hf_dir, ck)
        out[arch] = (model, hf_dir, ck)
    return out
