"""Resume after kill -9, end to end (issue #13 item 6): the real CLI with the trained demo model and
`--state-dir`, its whole process group killed with SIGKILL after a few chunks, then `--resume DIR`.

Frames are received over real ZeroMQ PUSH sockets (the sink in the CLI's process, the receiver here).
Checked: frame indices, chunk indices and pts go on from the saved state; nothing the sinks had not
received is skipped; the resumed frames equal an uninterrupted run's frames bit for bit (same seed);
the seam at the restart is measured against the in-run seams; the earlier file is kept and the
resumed run writes a new one whose timestamps go on. Bad --resume input: one line, status 2, before
the producer starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from continuityseq_stream.demo.metrics import frame_difference_stats
from continuityseq_stream.resume import STATE_FILE, read_state
from continuityseq_stream.sinks.receiver import Subscriber
from servers import free_port

F, FPS, TIMES = 4, 8, 14
BASE = ["--model", "demo", "--prompt", "a red circle moving left on a gray background", "-r", "11", "-f", str(FPS),
        "-s", "8", "--ring-frames", "8"]


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                XDG_CACHE_HOME=str(tmp_path.parent / "xdg-cache-resume"))


def _start(args, tmp_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "continuityseq_stream.cli", *BASE, *args, "-o", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
                            start_new_session=True)


class Receiver:
    """A PULL socket in a thread: every frame and header until end-of-stream or `stop()`."""

    def __init__(self, port: int) -> None:
        self.frames: dict = {}
        self.headers: list = []
        self.eos = False
        self._stop = threading.Event()
        self._sub = Subscriber(f"tcp://127.0.0.1:{port}", pull=True, timeout=0.5)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._sub.recv()
            except TimeoutError:
                continue
            if item is None:
                self.eos = True
                return
            frame, header = item
            self.headers.append(header)
            self.frames.setdefault(header["index"], frame.copy())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sub.close()


def _wait(cond, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _run_to_end(args, tmp_path, timeout=300):
    """A CLI run into a PUSH sink, received here until end-of-stream; (receiver, completed process)."""
    port = free_port()
    rx = Receiver(port)
    proc = _start([*args, "--sink", f"zmq+push://127.0.0.1:{port}"], tmp_path)
    try:
        out, err = proc.communicate(timeout=timeout)
        _wait(lambda: rx.eos, 30, "end-of-stream")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        rx.stop()
    assert proc.returncode == 0, err
    return rx, err


@pytest.mark.slow
def test_kill9_then_resume_continues_the_same_video(tmp_path):
    state = tmp_path / "state"
    reference, _ = _run_to_end(["--times", str(TIMES)], tmp_path)
    assert sorted(reference.frames) == list(range(TIMES * F))

    # the run that crashes: forever, killed with SIGKILL (whole process group) after some chunks
    port = free_port()
    rx = Receiver(port)
    crashed = _start(["--forever", "--state-dir", str(state), "--sink", f"zmq+push://127.0.0.1:{port}",
                      "--sink", f"file:{tmp_path / 'video.mp4'}"], tmp_path)
    try:
        _wait(lambda: (state / STATE_FILE).exists() and read_state(str(state))["next_chunk"] >= 4, 240,
              "the state of chunk 4")
    finally:
        os.killpg(crashed.pid, signal.SIGKILL)
        crashed.communicate(timeout=30)
        time.sleep(1.0)  # what was on the wire arrives
        rx.stop()
    saved = read_state(str(state))
    start = saved["next_frame"]
    assert start == saved["next_chunk"] * F
    got = sorted(rx.frames)
    assert got == list(range(len(got))), "the crashed run's frames arrive in order, without gaps"
    # the state never runs ahead of what the sinks received (nothing is skipped); it lags by what was
    # delivered since the keeper's last look (0.2 s) and the rest of a chunk (loose: the load varies)
    assert len(got) - (8 + 3 * F) <= start <= len(got), (start, len(got))

    resumed, err = _run_to_end(["--times", str(TIMES), "--resume", str(state),
                                "--sink", f"file:{tmp_path / 'video.mp4'}"], tmp_path)
    assert f"resuming from {state}: chunk {saved['next_chunk']}, frame {start}" in err
    # frame indices, chunk indices and pts go on from the saved state
    indices = [h["index"] for h in resumed.headers]
    assert indices == list(range(start, TIMES * F))
    assert [h["chunk"] for h in resumed.headers] == [i // F for i in indices]
    assert [h["pts"] for h in resumed.headers] == pytest.approx([i / FPS for i in indices])
    # the same video: the frames the uninterrupted run made, bit for bit, before and after the crash
    for i in range(len(got)):
        assert np.array_equal(rx.frames[i], reference.frames[i]), i
    for i in indices:
        assert np.array_equal(resumed.frames[i], reference.frames[i]), i

    # the seam at the restart vs the in-run seams (chunk boundaries) and the steps inside chunks
    video = np.stack([rx.frames[i] for i in range(start)] + [resumed.frames[i] for i in indices])
    steps = np.abs(np.diff(video.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    restart = float(steps[start - 1])
    ref = np.stack([reference.frames[i] for i in range(TIMES * F)]).astype(np.float32)
    ref_steps = np.abs(np.diff(ref, axis=0)).mean(axis=(1, 2, 3))
    assert restart == float(ref_steps[start - 1])  # the very seam the uninterrupted run has there
    in_run = [float(ref_steps[b - 1]) for b in range(F, TIMES * F, F)]
    assert min(in_run) <= restart <= max(in_run)
    boundaries = [float(steps[b - 1]) for b in range(F, TIMES * F, F) if b != start]
    inside = [float(d) for n, d in enumerate(steps) if (n + 1) % F]
    stats = frame_difference_stats(video, F)
    print(f"\nreceived {len(got)} frames before kill -9, resumed from frame {start}")
    print(f"seam at the restart (frame {start - 1} -> {start}): {restart:.2f}; other chunk boundaries: mean "
          f"{np.mean(boundaries):.2f}, range {min(boundaries):.2f}-{max(boundaries):.2f}; inside chunks: mean "
          f"{np.mean(inside):.2f}, range {min(inside):.2f}-{max(inside):.2f}; frame_difference_stats {stats}")

    # the earlier file is kept; the resumed run wrote a new one (its own timeline, from 0)
    new = tmp_path / f"video.resume-c{saved['next_chunk']:06d}.mp4"
    assert (tmp_path / "video.mp4").exists() and new.exists()
    with av.open(str(new)) as c:
        times = [float(frame.time) for frame in c.decode(video=0)]
    assert times == pytest.approx([n / FPS for n in range(TIMES * F - start)])
    # and the state now says the video is done up to TIMES
    assert read_state(str(state))["next_chunk"] == TIMES


RUNNER = r"""
import os, sys
marker = sys.argv[1]
from continuityseq_stream.runtime import producer

def _must_not_start(self, *args, **kwargs):
    with open(marker, "w") as f:
        f.write("the producer was started")
    os._exit(97)

producer.Producer.start = _must_not_start
from continuityseq_stream.cli import main
main(sys.argv[2:], prog_name="continuityseq-stream")
"""


def _refused(args, tmp_path, command="run") -> str:
    marker = tmp_path / "started"
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(marker), command, "--model", "demo-random", "--prompt", "x",
                           "-WI", "64", "-HI", "64", "-T", "4", *args, *(["-o", str(tmp_path / "out")] if command == "run" else [])],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.slow
def test_bad_resume_input_is_one_line_before_the_producer_starts(tmp_path):
    from continuityseq_stream.resume import ResumePoint, save_state

    import torch

    empty = tmp_path / "empty"
    empty.mkdir()
    for command in ("run", "serve"):
        line = _refused(["--resume", str(empty)], tmp_path, command)
        assert line.startswith("continuityseq-stream: error: --resume: no saved state in"), line
    state = tmp_path / "state"
    state.mkdir()
    point = ResumePoint(3, 12, torch.zeros(1, 4, 2, 8, 8), torch.Generator().get_state(), None,
                        {"prompt": "x"})
    save_state(str(state), point, {"model": "demo-random", "width": 64, "height": 64, "num_frames": 4,
                                   "upscale": False})
    line = _refused(["--resume", str(state), "-WI", "96"], tmp_path)
    assert "--resume: the state in" in line and "-m demo-random at 64x64, -T 4" in line, line
    assert "this run has -m demo-random at 96x64, -T 4" in line and "-WI/--width" in line, line
    line = _refused(["--resume", str(state), "--times", "2"], tmp_path)
    assert "already has 3 chunks and -t/--times 2 asks for no more" in line and "--forever" in line, line
    (tmp_path / "file").write_text("x")
    line = _refused(["--state-dir", str(tmp_path / "file" / "sub")], tmp_path)
    assert line.startswith("continuityseq-stream: error: --state-dir: cannot create"), line


class _Serve:
    """`continuityseq-stream serve` with the trained demo in its own process group; URL from stderr."""

    def __init__(self, args, tmp_path) -> None:
        self.lines: list = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "continuityseq_stream.cli", "serve", *BASE, "--port", "0", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(tmp_path), start_new_session=True)
        threading.Thread(target=lambda: [self.lines.append(line.rstrip()) for line in self.proc.stderr],
                         daemon=True).start()
        _wait(lambda: self._url() is not None or self.proc.poll() is not None, 120, "serving on")
        self.url = self._url()
        assert self.url is not None, self.lines

    def _url(self):
        import re

        for line in list(self.lines):
            m = re.match(r"serving on (http://\S+/) ", line)
            if m:
                return m.group(1)
        return None

    def api(self, method, path, body=None):
        from service_helpers import request

        status, _, answer = request(method, self.url + path, body)
        assert status == 200, answer
        return answer

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


@pytest.mark.slow
def test_serve_resumes_with_the_live_changes_made_before_the_crash(tmp_path):
    """serve: --state-dir/--resume pass through; a guidance change sent over the HTTP API before the
    kill -9 is in effect after the restart, the status shows it, and new commands apply at chunks
    after the resumed one (the control channel starts at the saved chunk)."""
    state = tmp_path / "state"
    first = _Serve(["--state-dir", str(state)], tmp_path)
    try:
        at = first.api("POST", "api/command", {"command": "set_guidance", "guidance_scale": 5.5})["applies_at_chunk"]
        _wait(lambda: (state / STATE_FILE).exists() and read_state(str(state))["next_chunk"] > at + 1, 240,
              "a state after the guidance change")
    finally:
        first.kill()
    saved = read_state(str(state))
    port = free_port()
    rx = Receiver(port)
    second = _Serve(["--resume", str(state), "--sink", f"zmq+push://127.0.0.1:{port}"], tmp_path)
    try:
        _wait(lambda: len(rx.headers) >= F, 240, "resumed frames")
        assert rx.headers[0]["index"] == saved["next_frame"] and rx.headers[0]["chunk"] == saved["next_chunk"]
        schedule = second.api("GET", "api/schedule")
        assert schedule["guidance_scale"] == 5.5, schedule
        answer = second.api("POST", "api/command", {"command": "set_guidance", "guidance_scale": 6.5})
        assert answer["applies_at_chunk"] > saved["next_chunk"], answer
        os.killpg(second.proc.pid, signal.SIGTERM)
        assert second.proc.wait(60) == 0, second.lines
    finally:
        if second.proc.poll() is None:
            second.kill()
        rx.stop()
    assert any(f"resuming from {state}: chunk {saved['next_chunk']}" in line for line in second.lines), second.lines
    assert read_state(str(state))["next_chunk"] > saved["next_chunk"]
