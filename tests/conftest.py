"""Test-wide settings: never reach for the hub, keep torch single-purpose and deterministic."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

GOLDEN_DIR = Path(__file__).parent / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR


@pytest.fixture(autouse=True)
def _isolated_package_logger():
    """The CLI installs a stderr handler on the package logger when a run starts; restore the logger
    after each test so one test's handler cannot write into another test's captured stderr."""
    import logging

    log = logging.getLogger("continuityseq_stream")
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:] = saved[0]
    log.setLevel(saved[1])
    log.propagate = saved[2]


@pytest.fixture(scope="module")
def pipe():
    """A ContinuitySeqPipeline of tiny random-weight components (seed 0), one per test module."""
    from continuityseq_stream.pipeline import ContinuitySeqPipeline
    from continuityseq_stream.tiny import get_dummy_components

    p = ContinuitySeqPipeline(**get_dummy_components(seed=0))
    p.set_progress_bar_config(disable=True)
    return p
