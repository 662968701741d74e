"""Stop time with a hung consumer: from the first SIGINT to the end of the run (docs/reliability.md).

    python -m bench.bench_stop            # default --sink-timeout / stop_grace (10 s each), ring 64
    python -m bench.bench_stop --quick    # sink_timeout 2 s, stop_grace 2 s, ring 16 (smoke test)

Each case is a fresh run in a child process (synthetic source, 64x48 at 8 fps, a file sink beside the
hung one), stopped with SIGINT some seconds after it started:
- rtmp: an RTMP sink to a TCP server on 127.0.0.1 that accepts and never answers the handshake;
- push: a zmq+push sink whose PULL reader (another process) takes 5 frames and then never reads again.
Printed per case: the exit status, seconds from SIGINT to exit, frames made, frames in the file.
The figure includes the healthy sinks' drain: a paced RTMP sink plays the ring out at the output rate.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from ._common import PYTHON, bench_env, free_port, load, make_parser

RUNNER = """
import json, sys
from continuityseq_stream.config import GenerationConfig
from continuityseq_stream.runtime.loop import RuntimeOptions, run
a = json.loads(sys.argv[1])
sys.exit(run(GenerationConfig(**a["config"]), a["sinks"], RuntimeOptions(**a["options"])))
"""

PULL_THEN_STOP = """
import sys, time, zmq
s = zmq.Context().socket(zmq.PULL)
s.setsockopt(zmq.RCVHWM, 1); s.setsockopt(zmq.RCVBUF, 4096); s.setsockopt(zmq.LINGER, 0)
s.connect(sys.argv[1])
for _ in range(5):
    s.recv_multipart()
time.sleep(3600)
"""


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (a hung RTMP server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


def run_case(sinks: list[str], options: dict, sigint_after: float, video: str) -> dict:
    args = {"config": dict(prompt="bench", width=64, height=48, num_frames=8, fps=8.0, times=0),
            "sinks": sinks + [f"file:{video}"],
            "options": {"source": "continuityseq_stream.demo.synthetic_source:synthetic_stream", "status_interval": 0,
                        "source_kwargs": {"delay": 0.05}, **options}}
    proc = subprocess.Popen([PYTHON, "-c", RUNNER, json.dumps(args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=bench_env(1), start_new_session=True)
    try:
        time.sleep(sigint_after)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        stop_s = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait(10)
    m = re.search(r"\[end [^\]]*\] chunks \d+ \((\d+) frames\)", err)
    return {"status": proc.returncode, "stop_s": stop_s, "made": int(m.group(1)) if m else None,
            "in_file": count_frames(video), "detached": sum("detached" in line for line in err.splitlines()
                                                             if line.startswith("sink "))}


def count_frames(path: str) -> int:
    import av

    try:
        with av.open(path) as c:
            return sum(1 for _ in c.decode(video=0))
    except (av.FFmpegError, OSError):
        return 0


def main() -> None:
    ap = make_parser(__doc__, quick="short timeouts and one SIGINT time (smoke test)")
    a = ap.parse_args()
    if a.quick:
        options, delays = {"sink_timeout": 2.0, "stop_grace": 2.0, "ring_frames": 16}, [3.0]
    else:
        options, delays = {"ring_frames": 64}, [4.0, 25.0]
    settings = ", ".join(f"{k} {v:g}" for k, v in options.items())
    print(f"stop after SIGINT with a hung consumer ({settings}; defaults otherwise; {load()})")
    with tempfile.TemporaryDirectory() as tmp:
        for delay in delays:
            server = SilentServer()
            try:
                r = run_case([f"rtmp://127.0.0.1:{server.port}/live/bench"], options, delay, f"{tmp}/rtmp{delay}.mp4")
            finally:
                server.close()
            print(f"  rtmp (server never answers), SIGINT at {delay:g} s: exit {r['status']} in {r['stop_s']:.1f} s, "
                  f"{r['made']} frames made, {r['in_file']} in the file")
            port = free_port()
            reader = subprocess.Popen([PYTHON, "-c", PULL_THEN_STOP, f"tcp://127.0.0.1:{port}"], env=bench_env(1))
            try:
                r = run_case([f"zmq+push://127.0.0.1:{port}?hwm=1"], options, delay, f"{tmp}/push{delay}.mp4")
            finally:
                reader.kill()
                reader.wait(10)
            print(f"  push (reader stopped), SIGINT at {delay:g} s: exit {r['status']} in {r['stop_s']:.1f} s, "
                  f"{r['made']} frames made, {r['in_file']} in the file, {r['detached']} sink detached")


if __name__ == "__main__":
    main()
