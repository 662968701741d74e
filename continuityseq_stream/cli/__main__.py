"""`python -m continuityseq_stream.cli` runs the command line."""

from .app import main

main()
