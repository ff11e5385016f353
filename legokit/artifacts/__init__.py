"""Artifacts: the one-file .st format, the allowlist foreign archives pass, each kind's codec and description.

`format` reads and writes the safetensors container and its sealed header; `allowlist` (with `program_schema` and
`symexpr`) checks a foreign encoder's torch.export archive before any torch loader sees it; `registry` and `kinds`
hold what each artifact kind is and how it turns into tensors and back; `files` saves, loads and merges files.
"""
