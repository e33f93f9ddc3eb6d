"""Audio: decoding to 16 kHz mono (`decode`), the audio-transcript shard format (`shards`) and
`tools/preprocess_audio.py` (`preprocess`)."""
