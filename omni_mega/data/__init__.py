"""Data, from files on disk to a stage's micro-batches.

    text/        tokenizers, `.bin/.idx` preprocessing, the indexed-document reader
    images/      decode (Pillow | DALI) -> smart_resize -> pack_images
    multimodal/  image-text shards and their preprocessing
    demo/        built-in text and image-text data
    readers.py   one reader per dataset source kind (demo_text, indexed, demo_mm, mm_shards)
    packing.py   pure packing: sizes, best-fit decreasing, data-parallel dealing, pack layout
    packed_source.py  a stage's stream of packs: mixing, packing, resume state, materialising
    prefetch.py  preparing the next steps' micro-batches in the background
    source.py    the source protocol and the one builder the trainer calls
"""
