"""omni_mega: a Megatron-style training stack for multimodal models."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `omni_mega.ops` loads torch and the compiled extension (and registers the ops): only when asked for, so
    # `omni-mega --help` and `--version` start without torch.
    if name == "ops":
        import importlib

        return importlib.import_module("omni_mega.ops")
    raise AttributeError(f"module 'omni_mega' has no attribute {name!r}")
