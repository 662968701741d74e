"""The streaming runtime end to end, with real processes: producer process + ring + several sinks.

Runs use the synthetic source (`continuityseq_stream.demo.synthetic_source`), whose frames are a pure function of
their index, so every sink's output can be checked frame by frame. Runs that need signals or stdout
happen in a child Python process (its own session, so a whole process group can be killed).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import av
import numpy as np
import pytest

from continuityseq_stream.config import GenerationConfig
from continuityseq_stream.errors import ConfigError, SinkError
from continuityseq_stream.runtime.loop import RuntimeOptions, run
from continuityseq_stream.sinks.base import Sink
from continuityseq_stream.demo.synthetic_source import decode_index, synthetic_frame

SOURCE = "continuityseq_stream.demo.synthetic_source:synthetic_stream"
W, H, F, FPS = 64, 48, 8, 8.0

RUNNER = """
import json, sys
from continuityseq_stream.config import GenerationConfig
from continuityseq_stream.runtime.loop import RuntimeOptions, run
a = json.loads(sys.argv[1])
sys.exit(run(GenerationConfig(**a["config"]), a["sinks"], RuntimeOptions(**a["options"])))
"""


def config(**kw) -> GenerationConfig:
    values = dict(prompt="synthetic", width=W, height=H, num_frames=F, fps=FPS, times=3)
    values.update(kw)
    return GenerationConfig(**values)


def options(**kw) -> RuntimeOptions:
    values = dict(source=SOURCE, status_interval=0, ring_frames=16)
    values.update(kw)
    return RuntimeOptions(**values)


def start_run(sinks, *, cfg: dict, opts: dict, stdout=subprocess.PIPE) -> subprocess.Popen:
    args = {"config": dict(prompt="synthetic", width=W, height=H, num_frames=F, fps=FPS, **cfg),
            "sinks": sinks, "options": {"source": SOURCE, "status_interval": 0, "ring_frames": 16, **opts}}
    return subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(args)], stdout=stdout,
                            stderr=subprocess.PIPE, start_new_session=True)


def read_frames(proc: subprocess.Popen, n: int, timeout: float = 60.0) -> list[np.ndarray]:
    """Read up to n raw rgb24 frames from the run's stdout (fewer at EOF); kills it after `timeout`."""
    size, out = W * H * 3, []
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        for _ in range(n):
            data = b""
            while len(data) < size:
                part = proc.stdout.read(size - len(data))
                if not part:
                    return out
                data += part
            out.append(np.frombuffer(data, np.uint8).reshape(H, W, 3))
    finally:
        watchdog.cancel()
    return out


def decode_file(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def end_frames(stderr: str) -> int:
    """Frames the producer put in the ring, from the final status line."""
    m = re.search(r"\[end [^\]]*\] chunks \d+ \((\d+) frames\)", stderr)
    assert m, stderr
    return int(m.group(1))


def assert_sequence(frames, exact: bool) -> None:
    for i, f in enumerate(frames):
        assert decode_index(f) == i
        if exact:
            assert np.array_equal(f, synthetic_frame(i, W, H))
        else:  # lossy H.264
            assert np.abs(f.astype(int) - synthetic_frame(i, W, H)).mean() < 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_shm_left(pid: int) -> bool:
    return not [n for n in os.listdir("/dev/shm") if n.startswith(f"csq_{pid}_")]


# -- sinks for in-process runs -------------------------------------------------------------------

class ListSink(Sink):
    """Keeps (index, frame) in memory; optional failure or stop request after n frames."""

    def __init__(self, name="list", *, fail_open=False, fail_after=None, stop_after=None, policy="block", delay=0.0):
        super().__init__(name)
        self.policy = policy
        self.fail_open, self.fail_after, self.stop_after, self.delay = fail_open, fail_after, stop_after, delay
        self.frames: list[tuple[int, np.ndarray]] = []
        self.closed_calls = 0

    def _open(self, info):
        if self.fail_open:
            raise SinkError(f"{self.name}: cannot open (test)")

    def _write(self, frame, meta):
        if self.fail_after is not None and len(self.frames) >= self.fail_after:
            raise SinkError(f"{self.name}: target went away (test)")
        if self.delay:
            time.sleep(self.delay)
        self.frames.append((meta.index, frame.copy()))  # the frame is a view of the ring, valid during write
        if self.stop_after is not None and len(self.frames) >= self.stop_after:
            self.wants_stop.set()

    def _close(self):
        self.closed_calls += 1


# -- tests -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_times_chunks_reach_every_sink_in_order(tmp_path, capsys):
    a, b = ListSink("a"), ListSink("b", policy="latest")
    rc = run(config(times=3), [a, b, f"file:{tmp_path / 'out.mp4'}"], options())
    assert rc == 0
    assert [i for i, _ in a.frames] == list(range(3 * F))
    assert all(np.array_equal(f, synthetic_frame(i, W, H)) for i, f in a.frames)
    assert [i for i, _ in b.frames][-1] == 3 * F - 1
    assert a.closed_calls == b.closed_calls == 1
    assert_sequence(decode_file(tmp_path / "out.mp4"), exact=False)
    assert len(decode_file(tmp_path / "out.mp4")) == 3 * F
    err = capsys.readouterr()
    assert err.out == ""  # nothing on stdout
    assert end_frames(err.err) == 3 * F


@pytest.mark.slow
def test_file_stdout_and_zmq_push_get_identical_frames(tmp_path):
    port = free_port()
    from continuityseq_stream.sinks.receiver import Subscriber

    got = []

    def receive():
        with Subscriber(f"tcp://127.0.0.1:{port}", pull=True, timeout=30) as sub:
            for frame, header in sub:
                got.append((header, frame.copy()))

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    proc = start_run(["-", f"file:{tmp_path / 'out.mp4'}", f"zmq+push://127.0.0.1:{port}"], cfg={"times": 4}, opts={})
    try:
        raw = read_frames(proc, 10**6)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    receiver.join(30)
    assert proc.returncode == 0, err.decode()
    n = 4 * F
    assert len(raw) == n
    assert_sequence(raw, exact=True)
    assert [h["index"] for h, _ in got] == list(range(n))
    assert all(np.array_equal(f, raw[h["index"]]) for h, f in got)
    assert got[5][0]["pts"] == pytest.approx(5 / FPS) and got[5][0]["prompt"] == "synthetic"
    video = decode_file(tmp_path / "out.mp4")
    assert len(video) == n
    assert_sequence(video, exact=False)


@pytest.mark.slow
def test_a_failing_sink_reports_one_line_and_the_others_continue(tmp_path, capsys):
    keeps = ListSink("keeps")
    breaks = ListSink("breaks", fail_after=3)  # block policy: must be removed, or it would hold the producer
    rc = run(config(times=6), [keeps, breaks, "file:/nonexistent-dir/out.mp4", f"file:{tmp_path / 'ok.mp4'}"],
             options(ring_frames=4))
    err = capsys.readouterr().err
    assert rc == 0
    assert [i for i, _ in keeps.frames] == list(range(6 * F))
    assert len(decode_file(tmp_path / "ok.mp4")) == 6 * F
    failures = [line for line in err.splitlines() if line.startswith("sink ") and "failed" in line]
    assert len(failures) == 2, err
    assert "/nonexistent-dir" in failures[0] and "breaks" in failures[1]
    assert breaks.closed_calls == 1 and len(breaks.frames) == 3


@pytest.mark.slow
def test_every_sink_failing_stops_the_run(capsys):
    sinks = [ListSink("x", fail_open=True), ListSink("y", fail_after=2)]
    t0 = time.monotonic()
    rc = run(config(times=0), sinks, options(stop_grace=2))
    assert rc == 1
    assert time.monotonic() - t0 < 20
    assert all(s.closed_calls == 1 for s in sinks)


@pytest.mark.slow
def test_a_sink_asking_to_stop_ends_a_forever_run_gracefully():
    quitter, recorder = ListSink("quitter", policy="latest", stop_after=5), ListSink("recorder")
    rc = run(config(times=0), [quitter, recorder], options())
    assert rc == 0
    indices = [i for i, _ in recorder.frames]
    assert len(indices) >= 5 and indices == list(range(len(indices)))  # drained, lossless, in order


@pytest.mark.slow
def test_duration_stops_a_forever_run(capsys):
    sink = ListSink()
    t0 = time.monotonic()
    rc = run(config(times=0), [sink], options(duration=1.0, source_kwargs={"delay": 0.05}))
    elapsed = time.monotonic() - t0
    assert rc == 0 and 1.0 <= elapsed < 15
    assert len(sink.frames) == end_frames(capsys.readouterr().err)


@pytest.mark.slow
def test_producer_crash_is_one_line_nonzero_and_sinks_keep_what_they_had(tmp_path, capsys):
    sink = ListSink()
    rc = run(config(times=0), [sink, f"file:{tmp_path / 'out.mp4'}"], options(source_kwargs={"fail_after": 3}))
    err = capsys.readouterr().err
    assert rc == 1
    assert "producer failed: RuntimeError: synthetic failure before chunk 3" in err
    assert [i for i, _ in sink.frames] == list(range(3 * F))
    assert len(decode_file(tmp_path / "out.mp4")) == 3 * F


def test_bad_arguments_raise_before_anything_starts():
    with pytest.raises(ConfigError, match="sinks: no sink given"):
        run(config(), [], options())
    with pytest.raises(ConfigError, match="unknown sink"):
        run(config(), ["nonsense://x"], options())
    with pytest.raises(ConfigError, match="ring_frames: got 1"):
        options(ring_frames=1)
    with pytest.raises(ConfigError, match="duration"):
        options(duration=-1)
    with pytest.raises(ConfigError, match="unknown runtime option"):
        RuntimeOptions.from_dict({"ring_size": 3})
    with pytest.raises(ConfigError, match="module:function"):
        options(source="no_colon")


@pytest.mark.slow
def test_sigint_mid_run_leaves_a_playable_file_with_every_frame_produced(tmp_path):
    path = tmp_path / "out.mp4"
    proc = start_run(["-", f"file:{path}"], cfg={"times": 0}, opts={"source_kwargs": {"delay": 0.03}})
    try:
        first = read_frames(proc, 5 * F + 3)  # mid-chunk, while generation goes on
        assert len(first) == 5 * F + 3
        proc.send_signal(signal.SIGINT)
        rest = read_frames(proc, 10**6)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = err.decode()
    assert proc.returncode == 0, err
    produced = end_frames(err)
    assert "SIGINT: stopping" in err
    assert len(first) + len(rest) == produced
    assert_sequence(first + rest, exact=True)
    video = decode_file(path)
    assert len(video) == produced
    assert_sequence(video, exact=False)
    assert no_shm_left(proc.pid)


@pytest.mark.slow
def test_sigkill_of_the_process_group_leaves_a_playable_file(tmp_path):
    path = tmp_path / "out.mp4"
    proc = start_run(["-", f"file:{path}"], cfg={"times": 0}, opts={"source_kwargs": {"delay": 0.03}})
    try:
        seen = read_frames(proc, 6 * F)
        assert len(seen) == 6 * F
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    video = decode_file(path)  # plays: fragmented mp4
    keyint = round(FPS)  # the file sink flushes a fragment per key frame
    assert len(video) >= len(seen) - F - keyint
    assert_sequence(video, exact=False)
    assert no_shm_left(proc.pid)


@pytest.mark.slow
def test_stdout_reader_going_away_ends_that_sink_cleanly(tmp_path):
    proc = start_run(["-", f"file:{tmp_path / 'out.mp4'}"], cfg={"times": 0},
                     opts={"duration": 3.0, "source_kwargs": {"delay": 0.02}})
    try:
        assert len(read_frames(proc, 3)) == 3
        proc.stdout.close()  # like closing ffplay: EPIPE in the sink
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    err = err.decode()
    assert proc.returncode == 0, err
    ended = [line for line in err.splitlines() if line.startswith("sink stdout ended")]
    assert len(ended) == 1, err
    assert "Traceback" not in err
    assert len(decode_file(tmp_path / "out.mp4")) == end_frames(err)  # the file went on to the end


@pytest.mark.slow
def test_second_sigint_forces_a_fast_exit_and_still_closes_sinks(tmp_path):
    path = tmp_path / "out.mp4"
    # a lossless stdout whose reader stops reading: the first SIGINT waits for a drain that never comes
    proc = start_run(["-", f"file:{path}"], cfg={"times": 0}, opts={"ring_frames": 8})
    try:
        assert len(read_frames(proc, 2)) == 2
        deadline = time.monotonic() + 20
        while not path.exists() or path.stat().st_size == 0:  # the file sink has written something
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(1.5)  # stdout is not read: the graceful stop cannot drain it
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "forcing the exit" in err
    assert len(decode_file(path)) > 0  # closed properly
