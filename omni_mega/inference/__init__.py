"""Inference: autoregressive generation with a KV cache of our own (TP-aware, CPU and GPU)."""

from omni_mega.inference.generate import GenerationResult, Generator, KVCache, SamplingParams, greedy_decode

__all__ = ["GenerationResult", "Generator", "KVCache", "SamplingParams", "greedy_decode"]
