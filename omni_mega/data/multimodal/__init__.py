"""Image-text data: the shard format (WebDataset-style tars + a small index per shard) and its preprocessing tool
(`tools/preprocess_mmdata.py`)."""
