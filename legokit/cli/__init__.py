"""The `legokit` command: `commands` parses, calls the library and prints (`main` is its entry point); `doc` renders
its reference tables."""

from legokit.cli.commands import main

__all__ = ["main"]
