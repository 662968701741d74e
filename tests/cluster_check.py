"""The multi-stream service end to end, for one back end; run by tests/test_cluster.py in a network
namespace of its own (Ray binds every interface it finds: in `unshare -n` only lo exists).

    python tests/cluster_check.py local|ray WORKDIR

Starts `continuityseq-stream cluster` (for Ray: first `ray start --head` with 2 CPUs, no
dashboard, so that streams outlive the ingress), then as a user would, over HTTP only:
two streams of the trained demo model with different prompts, each pushing its frames to a ZeroMQ
PULL socket bound here (stream b also writes a file); a prompt change on a; kill -9 of a's worker
process (the stream's own process on the local back end, the actor's worker on Ray); the create
errors (full, bad flags, unknown id); stop and delete; the ingress stopped and started again with
the streams going on. Prints one JSON object with everything observed; the test asserts on it.
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
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import zmq

FRAMES = 4  # the trained demo's frames per chunk
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method: str, url: str, body=None, timeout: float = 400.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


class Reader:
    """A ZeroMQ PULL socket bound here; a thread keeps every frame's header and pixels."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.headers: list[dict] = []
        self.frames: dict[int, list[np.ndarray]] = {}
        self.times: list[float] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def sink(self) -> str:
        return f"zmq+push://127.0.0.1:{self.port}?connect=1"

    def _run(self) -> None:
        while not self._stop:
            if not self.sock.poll(200):
                continue
            head, data = self.sock.recv_multipart()
            header = json.loads(head)
            if header.get("eos"):
                continue
            frame = np.frombuffer(data, dtype=header["dtype"]).reshape(header["shape"])
            self.frames.setdefault(int(header["index"]), []).append(frame.copy())
            self.headers.append(header)
            self.times.append(time.monotonic())

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(f"no {what} within {timeout} s ({len(self.headers)} frames)")

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


def start_cluster(backend: str, work: Path, port: int, log_name: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "continuityseq_stream.cli", "cluster", "--port", str(port),
           "--state-root", str(work / "root"), "--max-streams", "2", "--start-timeout", "240"]
    if backend == "ray":
        cmd += ["--ray", "auto", "--stream-cpus", "1"]
    log = open(work / log_name, "wb")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        text = (work / log_name).read_text(errors="replace")
        if "serving streams on" in text:
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"cluster exited {proc.returncode}: {text[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"cluster did not start: {(work / log_name).read_text(errors='replace')[-2000:]}")


def stop_cluster(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return -9


def wait_info(base: str, stream_id: str, predicate, timeout: float, what: str) -> dict:
    deadline, info = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        status, info = call("GET", f"{base}streams/{stream_id}", timeout=30)
        if status == 200 and predicate(info):
            return info
        time.sleep(0.3)
    raise AssertionError(f"stream {stream_id}: no {what} within {timeout} s: {info}")


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def first_frame_of_restart(reader: Reader, t_kill: float) -> float:
    """When the restarted process's first frame arrived.

    Frames already on their way when the worker died still arrive after the kill, so "the first frame
    after the kill" may come from the dead process. The restarted one resumes at the last saved chunk,
    so its first frame repeats an index already seen; with no repeat, nothing was in flight and the
    first frame after the kill is its own.
    """
    seen: set[int] = set()
    after = []
    for header, t in zip(list(reader.headers), list(reader.times)):
        index = int(header["index"])
        if t > t_kill:
            if index in seen:
                return t
            after.append(t)
        seen.add(index)
    return after[0] if after else time.monotonic()


def seams(reader: Reader, upto: int) -> list[float]:
    """Mean abs difference at every chunk boundary below `upto` (first copy of each frame)."""
    return [mean_abs(reader.frames[i - 1][0], reader.frames[i][0])
            for i in range(FRAMES, upto, FRAMES) if i - 1 in reader.frames and i in reader.frames]


def scenario(backend: str, work: Path) -> dict:
    out: dict = {"backend": backend}
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    if backend == "ray":
        subprocess.run([RAY, "start", "--head", "--num-cpus", "2", "--include-dashboard=false",
                        "--disable-usage-stats"], check=True, capture_output=True, timeout=180)
    ra, rb = Reader(), Reader()
    cluster = start_cluster(backend, work, port, "cluster1.log")
    try:
        demo = {"model": "demo", "seed": 11, "ring-frames": 8}
        t0 = time.monotonic()
        status, a = call("POST", base + "streams", {"id": "a", "flags": {**demo, "prompt": "a red ball",
                                                                          "sink": [ra.sink]}})
        out["create_a"] = [status, a.get("state"), time.monotonic() - t0]
        assert status == 201, f"a was not made: {status} {a}"
        out["bad_flag"] = call("POST", base + "streams", {"id": "d", "flags": {"model": "demo", "guidance-scale": "x",
                                                                               "prompt": "y"}})
        status, b = call("POST", base + "streams", {"id": "b", "flags": {**demo, "prompt": "a blue sky",
                                                                          "sink": [rb.sink, f"file:{work}/b.mp4"]}})
        out["create_b"] = [status, b.get("state")]
        assert status == 201, f"b was not made: {status} {b}"
        out["full"] = call("POST", base + "streams", {"id": "c", "flags": {**demo, "prompt": "x"}})
        out["reserved_flag"] = call("POST", base + "streams", {"id": "e", "flags": {"port": 1}})
        out["unknown"] = call("GET", base + "streams/nope")
        out["listed"] = [s["id"] for s in call("GET", base + "streams")[1]["streams"]]
        ra.wait(lambda: len(ra.headers) >= 3 * FRAMES, 240, "3 chunks from a")
        rb.wait(lambda: len(rb.headers) >= 3 * FRAMES, 240, "3 chunks from b")
        out["prompts_before"] = [sorted({h["prompt"] for h in ra.headers}), sorted({h["prompt"] for h in rb.headers})]

        # steer a only
        out["set_prompt"] = call("POST", base + "streams/a/api/prompt", {"prompt": "a green cube"})
        ra.wait(lambda: any(h["prompt"] == "a green cube" for h in ra.headers), 120, "a's new prompt")
        mark_b = len(rb.headers)
        rb.wait(lambda: len(rb.headers) >= mark_b + 2 * FRAMES, 120, "b's chunks after a's change")
        out["prompts_after"] = [sorted({h["prompt"] for h in ra.headers}), sorted({h["prompt"] for h in rb.headers})]
        out["status_b_prompt"] = call("GET", base + "streams/b/api/status")[1].get("prompt")

        # kill -9 of a's worker: the stream comes back from its saved state, b never stops
        info = call("GET", base + "streams/a")[1]
        out["worker_pid_is_not_stream_pid"] = info["worker_pid"] != info["pid"]
        before = max(int(h["index"]) for h in ra.headers)
        in_run = seams(ra, before + 1)
        b_at_kill, t_kill = len(rb.headers), time.monotonic()
        os.kill(info["worker_pid"], signal.SIGKILL)
        info = wait_info(base, "a", lambda i: i.get("restarts", 0) >= 1 and i.get("state") == "running", 240,
                         "restart")
        out["restarted"] = {k: info.get(k) for k in ("state", "restarts", "resumed")}
        ra.wait(lambda: max(int(h["index"]) for h in ra.headers) >= before + 3 * FRAMES, 240, "a's frames after the restart")
        t_back = first_frame_of_restart(ra, t_kill)
        indices = sorted(ra.frames)
        out["a_indices_contiguous"] = indices == list(range(indices[0], indices[-1] + 1))
        out["a_first_index"] = indices[0]
        twice = [i for i, copies in ra.frames.items() if len(copies) > 1]
        out["a_remade"] = len(twice)
        out["a_remade_identical"] = all(np.array_equal(ra.frames[i][0], ra.frames[i][1]) for i in twice)
        resumed_at = min(twice) if twice else before + 1
        out["seam_restart"] = mean_abs(ra.frames[resumed_at - 1][0], ra.frames[resumed_at][-1])
        out["seam_in_run"] = [min(in_run), max(in_run)] if in_run else None
        out["a_resumed_at"], out["a_last_before_kill"] = resumed_at, before
        out["a_gap_s"] = t_back - t_kill
        b_during = [t for t in rb.times if t_kill < t < t_back]
        out["b_frames_during_restart"] = len(b_during)
        out["b_frames_since_kill"] = len(rb.headers) - b_at_kill
        b_idx = sorted(rb.frames)
        out["b_indices_contiguous"] = b_idx == list(range(b_idx[0], b_idx[-1] + 1))
        out["b_restarts"] = call("GET", base + "streams/b")[1].get("restarts")

        metrics = call("GET", base + "metrics")[1]
        out["metrics_streams"] = sorted(set(re.findall(r'stream="([^"]+)"', metrics)))
        out["metrics_restarts_a"] = re.findall(r'continuityseq_cluster_stream_restarts_total\{stream="a"\} (\d+)', metrics)
        out["metrics_frames_labelled"] = bool(re.search(r'\{stream="b"[,}]', metrics))
        out["health_a"] = call("GET", base + "streams/a/healthz")

        # the ingress stops; the streams go on; a new ingress finds them
        pids = {s: call("GET", base + f"streams/{s}")[1]["pid"] for s in ("a", "b")}
        out["cluster_exit"] = stop_cluster(cluster)
        n_b = len(rb.headers)
        rb.wait(lambda: len(rb.headers) >= n_b + FRAMES, 120, "b's frames with the ingress stopped")
        out["alive_without_ingress"] = {s: os.path.exists(f"/proc/{pid}") for s, pid in pids.items()}
        cluster = start_cluster(backend, work, port, "cluster2.log")
        listed = call("GET", base + "streams")[1]["streams"]
        out["relisted"] = {s["id"]: [s["state"], s["pid"] == pids[s["id"]]] for s in listed}

        # stop b (its file is complete), delete both
        out["stop_b"] = call("POST", base + "streams/b/stop")[1].get("state")
        out["b_file_frames"] = count_frames(work / "b.mp4")
        out["delete"] = [call("DELETE", base + f"streams/{s}")[0] for s in ("a", "b")]
        out["after_delete"] = call("GET", base + "streams")[1]["streams"]
        out["folders_left"] = sorted(p.name for p in (work / "root").iterdir())
    finally:
        out["cluster_exit_final"] = stop_cluster(cluster)
        ra.close()
        rb.close()
        if backend == "ray":
            subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
    time.sleep(1)
    out["left_processes"] = [p for p in os.popen("ps -eo args").read().splitlines()
                             if "continuityseq_stream.cli" in p and str(work) in p]
    return out


def count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


if __name__ == "__main__":
    result = scenario(sys.argv[1], Path(sys.argv[2]))
    print(json.dumps(result))
