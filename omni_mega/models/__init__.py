"""Models on megatron-core: the GPT LLM (llm.py), the native-resolution ViT and connectors (vision/), the omni model
that places visual embeddings in the LLM sequence (omni.py), named module groups (groups.py), one builder
(factory.py)."""
