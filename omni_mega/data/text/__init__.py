"""Text: tokenizers (GPT-2 BPE with a C++ encoder, Hugging Face, null), Megatron `.bin/.idx` preprocessing
(`tools/preprocess_data.py`) and the indexed-document reader training uses."""
