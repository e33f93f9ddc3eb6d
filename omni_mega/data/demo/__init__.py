"""The built-in demo data, made from nothing but Python and Pillow: English text from `pydoc_data.topics` (`text`,
`corpus`) and rendered text lines and shape scenes with captions (`scenes`)."""
