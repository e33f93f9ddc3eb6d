"""Audio input: the audio encoder (`encoder`) whose states a CTC head reads and a projector puts into the LLM."""
