"""Hugging Face interop: import a transformers folder (config.json + safetensors) into a megatron dist checkpoint that
loads at any TP/PP, export one back, with weight mappings as data (`interop.arch`) and named transforms
(`interop.transforms`)."""

from omni_mega.interop.errors import InteropError

__all__ = ["InteropError", "export_hf", "import_hf", "supported_architectures"]


def supported_architectures() -> list[str]:
    from omni_mega.interop.arch import FAMILIES

    return list(FAMILIES)


def import_hf(*args, **kwargs):
    from omni_mega.interop.convert import import_hf as f

    return f(*args, **kwargs)


def export_hf(*args, **kwargs):
    from omni_mega.interop.convert import export_hf as f

    return f(*args, **kwargs)
