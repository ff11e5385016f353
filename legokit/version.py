"""The package version, in one place (read by the CLI, artifact headers and model cards)."""

__version__ = "0.1.0"
