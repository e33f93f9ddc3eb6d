"""Data: tokenizers, indexed text datasets, images, packing, blends and samplers."""
