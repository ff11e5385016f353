"""Text blocks: the tokenizer a block carries (`spec`) and the checks its tokenizer.json passes (`tokenizer_check`)."""
