"""Files on disk, whatever they hold: atomic writes, checked reads of regular files, capped JSON and YAML."""
