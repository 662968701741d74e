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
    from continuityseq_stream.pipeline.pipeline import ContinuitySeqPipeline
    from continuityseq_stream.demo.tiny import get_dummy_components

    p = ContinuitySeqPipeline(**get_dummy_components(seed=0))
    p.set_progress_bar_config(disable=True)
    return p


# -- the quick tier starts no process ------------------------------------------------------------
def _process_description(args) -> str:
    text = args if isinstance(args, (str, bytes)) else " ".join(map(str, args or ()))
    return repr(str(text)[:100])


def _is_resource_tracker(args) -> bool:
    """multiprocessing's resource tracker: the stdlib starts it once for any shared memory, even in
    one process (the ring buffer's unit tests); it is not a process of the test."""
    return any("resource_tracker" in str(a) for a in (args or ()))


class _ProcessWatch:
    """Records every process started (subprocess, multiprocessing spawn or fork) while active."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def __enter__(self) -> "_ProcessWatch":
        import multiprocessing.util
        import subprocess

        self._saved = (subprocess.Popen._execute_child, multiprocessing.util.spawnv_passfds, os.fork)
        execute_child, spawnv_passfds, fork = self._saved
        watch = self

        def _execute_child(popen, args, *rest, **kw):
            watch.started.append("subprocess " + _process_description(args))
            return execute_child(popen, args, *rest, **kw)

        def _spawnv_passfds(path, args, passfds):
            if not _is_resource_tracker(args):
                watch.started.append("multiprocessing " + _process_description(args))
            return spawnv_passfds(path, args, passfds)

        def _fork():
            watch.started.append("os.fork()")
            return fork()

        subprocess.Popen._execute_child = _execute_child
        multiprocessing.util.spawnv_passfds = _spawnv_passfds
        os.fork = _fork
        return self

    def __exit__(self, *exc) -> None:
        import multiprocessing.util
        import subprocess

        subprocess.Popen._execute_child, multiprocessing.util.spawnv_passfds, os.fork = self._saved


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The quick tier (`pytest -m "not slow"`) starts no process or server: a test that is not marked
    `slow` and starts one (in its fixtures, its body or its teardown) fails with a line saying so,
    after it ran, so the tier stays quick however the suite grows."""
    if item.get_closest_marker("slow") is not None:
        yield
        return
    with _ProcessWatch() as watch:
        item.stash[_STARTED] = watch.started
        yield


_STARTED = pytest.StashKey[list]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    started = item.stash.get(_STARTED, None)
    if started and report.when == "teardown" and not report.failed:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} is not marked slow but started {len(started)} process(es): "
                           f"{'; '.join(started[:3])}. Mark it @pytest.mark.slow: the quick tier "
                           "(pytest -m 'not slow') starts no process or server.")
