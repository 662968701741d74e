"""The command line: `continuityseq-stream` (entry point `continuityseq_stream.cli:main`)."""

from .app import main

__all__ = ["main"]
