"""Flat memory: RSS of the main (runtime) process and of the producer process after 20 and after 500
chunks of a `--times 0` run (the original kept every frame until the end).

    python -m bench.bench_memory               # chunks 20 -> 500, demo model 64x64, 2 frames, 1 step
    python -m bench.bench_memory --quick       # chunks 5 -> 30 (smoke test)

The real CLI runs the tiny demo model forever with a file sink and a lossless ZeroMQ PUSH sink; this
script pulls the frames (back-pressure: the producer never runs ahead of the reader), reads the chunk
index from each frame's header, and samples RSS (psutil) of the CLI process and of its producer child
(the spawned child that is not multiprocessing's resource tracker) when chunk 20 and chunk 500 arrive.
The smallest sizes keep 500 chunks within a couple of minutes on 2 cores; memory per chunk is what
is measured, and frames here are tiny, so a leak of anything per chunk (tensors, frames, tracker
entries) still shows. Prints one line (acceptance: growth < 10 MB per process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time

from ._common import bench_env, cli_command, free_port, load, make_parser, warm_demo_cache

MB = 1e6


def rss_pair(proc) -> tuple[int, int]:
    import psutil

    main = psutil.Process(proc.pid)
    children = [c for c in main.children() if "resource_tracker" not in " ".join(c.cmdline())]
    if len(children) != 1:
        raise RuntimeError(f"expected one producer child, found {children}")
    return main.memory_info().rss, children[0].memory_info().rss


def main(argv=None) -> None:
    p = make_parser(__doc__, quick="chunks 5 -> 30", threads=1)
    p.add_argument("--first", type=int, default=20)
    p.add_argument("--last", type=int, default=500)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--steps", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.first, args.last = 5, 30
    import zmq

    env = bench_env(args.threads)
    warm_demo_cache(env)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = cli_command(width=args.width, height=args.height, frames=args.frames, steps=args.steps, times=0,
                          extra=["-o", tmp, "--sink", f"file:{tmp}/out.mp4", "--sink", f"zmq+push://127.0.0.1:{port}"])
        pull = zmq.Context.instance().socket(zmq.PULL)
        pull.connect(f"tcp://127.0.0.1:{port}")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        samples, t0, t_first = {}, time.monotonic(), None
        try:
            while len(samples) < 2:
                if not pull.poll(120_000):
                    raise RuntimeError("no frame for 120 s")
                header = json.loads(pull.recv_multipart()[0])
                if header.get("eos"):
                    raise RuntimeError("the run ended early")
                chunk = header["chunk"]
                last_of_chunk = header["index"] == (chunk + 1) * args.frames - 1
                if last_of_chunk and chunk + 1 in (args.first, args.last):
                    samples[chunk + 1] = rss_pair(proc)
                    if chunk + 1 == args.first:
                        t_first = time.monotonic()
            seconds = time.monotonic() - t_first
            proc.send_signal(signal.SIGINT)
            while pull.poll(30_000):  # drain until end of stream, so the run ends gracefully
                if json.loads(pull.recv_multipart()[0]).get("eos"):
                    break
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            pull.close(linger=0)
    (m1, p1), (m2, p2) = samples[args.first], samples[args.last]
    print(f"memory: RSS main {m1 / MB:.1f} -> {m2 / MB:.1f} MB ({(m2 - m1) / MB:+.1f}), producer {p1 / MB:.1f} -> "
          f"{p2 / MB:.1f} MB ({(p2 - p1) / MB:+.1f}) from chunk {args.first} to {args.last} "
          f"({args.last - args.first} chunks in {seconds:.0f}s; demo model {args.width}x{args.height}x{args.frames}, "
          f"{args.steps} step, --times 0, file + zmq push sinks; exit status {proc.returncode}; {load()})")


if __name__ == "__main__":
    main()
