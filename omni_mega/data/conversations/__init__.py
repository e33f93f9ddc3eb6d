"""Conversations: records as users write them (`messages`), chat templates with answer-only loss masks
(`templates`, `jinja`), the conversation shard format (`shards`) and its preprocessing tool (`preprocess`)."""
