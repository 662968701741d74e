"""Benchmarks that print figures (not timed tests). Run each as a module from the repository root:
`python -m bench.bench_ttff [--quick]`; shared helpers and argument handling are in `_common.py`."""
