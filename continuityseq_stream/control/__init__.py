"""Live control: the ZeroMQ control server in the main process, its client and the CLI command."""
