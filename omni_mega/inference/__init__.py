"""Inference: autoregressive generation with a KV cache of our own (TP- and PP-aware, CPU and GPU)."""

from omni_mega.inference.generate import (GenerationResult, Generator, KVCache, Prompt, SamplingParams,
                                          greedy_decode)

__all__ = ["GenerationResult", "Generator", "KVCache", "Prompt", "SamplingParams", "greedy_decode"]
