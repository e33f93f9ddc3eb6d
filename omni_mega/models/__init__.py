"""Models on megatron-core: the GPT LLM (llm.py); vision and connectors come with the models issue."""
