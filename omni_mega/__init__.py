"""omni_mega: a Megatron-style training stack for multimodal models."""

__version__ = "0.1.0"

from omni_mega import ops  # noqa: E402,F401  (registers the extension's ops on import)
