"""Transport throughput without a model: frames per second through the shared-memory ring (producer
process -> reader in this process), through a plain `multiprocessing.Queue` handoff of the same
frames, and through each sink on its own, at 576x320 and 1024x576.

    python bench/bench_transport.py            # 600 frames per figure, median of 3
    python bench/bench_transport.py --quick    # 200 frames, 1 run, 576x320 only (smoke test)

- ring: `FrameRing` (64 slots, one `block` reader) as the runtime uses it; a spawned process writes
  the frames (one copy into shared memory), this process reads them (one copy out). fps = frames /
  time from the first to the last frame read. CPU/frame: process time of writer + reader per frame
  (what the handoff takes away from the model on a small machine).
- queue: the same frames put by a spawned process into `multiprocessing.Queue(maxsize=64)` (pickled,
  written to a pipe by the feeder thread, read and unpickled here), timed the same way.
- sinks, each in this process, fps = frames / (writes + close): file (PyAV libx264 veryfast, fragmented
  mp4), zmq push (a PULL socket in a thread of this process receives every frame), zmq pub (a SUB in a
  thread; received count shown), stdout (to /dev/null), ffmpeg (x264 ultrafast to `-f null`, with the
  stream fps set to 1000 so the sink's real-time clock is not the limit).
Frames are the synthetic moving pattern (`continuityseq_stream.testing`), 16 distinct ones cycled,
so the encoders see motion. Prints a short table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import free_port, load, median  # noqa: E402

DISTINCT = 16


def make_frames(width: int, height: int) -> np.ndarray:
    from continuityseq_stream.testing import synthetic_frame

    return np.stack([synthetic_frame(i, width, height) for i in range(DISTINCT)])


# -- producer-process side (spawned children) ------------------------------------------------------
def _ring_writer(ring, width, height, n, cpu) -> None:
    from continuityseq_stream.chunk import FrameMeta

    frames = make_frames(width, height)
    ring.wait_ready(30)
    ring.attach()
    c0 = time.process_time()
    for i in range(n):
        while not ring.write(frames[i % DISTINCT], FrameMeta(index=i, chunk=0, pts=i / 16, prompt="bench"), timeout=1.0):
            pass
    cpu.value = time.process_time() - c0
    ring.close()
    ring.detach()


def _queue_writer(q, width, height, n, cpu) -> None:
    frames = make_frames(width, height)
    c0 = time.process_time()
    for i in range(n):
        q.put((frames[i % DISTINCT].copy(), i))  # a fresh array each time, as a producer would hand over
    q.put(None)
    q.close()
    q.join_thread()  # the feeder thread has pickled and written everything
    cpu.value = time.process_time() - c0


def ring_fps(width: int, height: int, n: int) -> tuple[float, float]:
    """(frames per second, CPU microseconds per frame in both processes together)."""
    from continuityseq_stream.ringbuffer import FrameRing, RingClosed

    ctx = mp.get_context("spawn")
    ring = FrameRing(64, max_readers=1, ctx=ctx)
    reader = ring.add_reader("block")
    ring.allocate(height, width)
    cpu = ctx.RawValue("d", 0.0)
    proc = ctx.Process(target=_ring_writer, args=(ring, width, height, n, cpu), daemon=True)
    proc.start()
    got, t_first, c0 = 0, None, time.process_time()
    try:
        while True:
            try:
                item = ring.read(reader, timeout=30)
            except RingClosed:
                break
            if item is None:
                raise RuntimeError("ring: no frame for 30 s")
            got += 1
            if t_first is None:
                t_first = time.monotonic()
        t_last, c1 = time.monotonic(), time.process_time()
    finally:
        proc.join(30)
        ring.destroy()
    assert got == n, (got, n)
    return (n - 1) / (t_last - t_first), 1e6 * (c1 - c0 + cpu.value) / n


def queue_fps(width: int, height: int, n: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue(maxsize=64)
    cpu = ctx.RawValue("d", 0.0)
    proc = ctx.Process(target=_queue_writer, args=(q, width, height, n, cpu), daemon=True)
    proc.start()
    got, t_first, c0 = 0, None, None
    while True:
        item = q.get(timeout=60)
        if item is None:
            break
        got += 1
        if t_first is None:
            t_first, c0 = time.monotonic(), time.process_time()
    t_last, c1 = time.monotonic(), time.process_time()
    proc.join(30)
    assert got == n, (got, n)
    return (n - 1) / (t_last - t_first), 1e6 * (c1 - c0 + cpu.value) / n


# -- sinks -------------------------------------------------------------------------------------------
def sink_fps(kind: str, width: int, height: int, n: int, frames: np.ndarray, tmp: str) -> tuple[float, str]:
    import zmq

    from continuityseq_stream.chunk import FrameMeta
    from continuityseq_stream.sinks import StreamInfo, sink_from_uri
    from continuityseq_stream.sinks.stdout import StdoutSink

    fps, note, received = 16.0, "", [0]
    receiver = None
    devnull = None
    if kind == "file":
        sink = sink_from_uri(f"file:{tmp}/bench_{width}x{height}.mp4")
    elif kind == "stdout":
        devnull = os.open(os.devnull, os.O_WRONLY)
        sink = StdoutSink(fd=devnull)
    elif kind == "ffmpeg":
        sink, fps = sink_from_uri("ffmpeg:/dev/null#format=null"), 1000.0
    elif kind in ("zmq-push", "zmq-pub"):
        port = free_port()
        push = kind == "zmq-push"
        sink = sink_from_uri(f"zmq+{'push' if push else 'pub'}://127.0.0.1:{port}")
        sock = zmq.Context.instance().socket(zmq.PULL if push else zmq.SUB)
        if not push:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.RCVHWM, 64)
        stop = threading.Event()

        def receive():
            while not stop.is_set():
                if sock.poll(100):
                    parts = sock.recv_multipart(copy=False)
                    if len(parts) == 2 and len(parts[1]) > 0:
                        received[0] += 1

        receiver = (threading.Thread(target=receive, daemon=True), stop, sock)
    else:
        raise ValueError(kind)
    sink.open(StreamInfo(width=width, height=height, fps=fps))
    if receiver is not None:
        sock.connect(f"tcp://127.0.0.1:{port}")
        receiver[0].start()
        time.sleep(0.3)  # let the subscription reach the PUB socket
    t0 = time.monotonic()
    for i in range(n):
        sink.write(frames[i % DISTINCT], FrameMeta(index=i, chunk=0, pts=i / fps, prompt="bench"))
    sink.close()
    elapsed = time.monotonic() - t0
    if receiver is not None:
        if kind == "zmq-push":
            deadline = time.monotonic() + 10
            while received[0] < n and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            time.sleep(0.2)
        receiver[1].set()
        receiver[0].join(5)
        receiver[2].close(linger=0)
        note = f"received {received[0]}/{n}"
    if devnull is not None:
        os.close(devnull)
    return n / elapsed, note


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", default="576x320,1024x576")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.repeats, args.sizes = 200, 1, "576x320"
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in sizes:
            frames = make_frames(w, h)
            ring, queue = [], []
            for _ in range(args.repeats):  # alternate, back to back
                ring.append(ring_fps(w, h, args.frames))
                queue.append(queue_fps(w, h, args.frames))
            row = {"size": f"{w}x{h}", "ring": median([f for f, _ in ring]), "queue": median([f for f, _ in queue]),
                   "ring_cpu": median([c for _, c in ring]), "queue_cpu": median([c for _, c in queue])}
            for kind in ("file", "zmq-push", "zmq-pub", "stdout", "ffmpeg"):
                results = [sink_fps(kind, w, h, args.frames, frames, tmp) for _ in range(args.repeats)]
                row[kind] = (median([f for f, _ in results]), results[-1][1])
            rows.append(row)
    print(f"transport fps (median of {args.repeats}, {args.frames} frames each; {load()})")
    print(f"{'size':>9} {'ring':>8} {'queue':>8} {'ring/q':>7} {'file':>7} {'zmq-push':>9} {'zmq-pub':>8} "
          f"{'stdout':>8} {'ffmpeg':>7}")
    for row in rows:
        print(f"{row['size']:>9} {row['ring']:>8.0f} {row['queue']:>8.0f} {row['ring'] / row['queue']:>6.1f}x "
              f"{row['file'][0]:>7.0f} {row['zmq-push'][0]:>9.0f} {row['zmq-pub'][0]:>8.0f} {row['stdout'][0]:>8.0f} "
              f"{row['ffmpeg'][0]:>7.0f}   CPU/frame ring {row['ring_cpu']:.0f} us, queue {row['queue_cpu']:.0f} us "
              f"({row['queue_cpu'] / row['ring_cpu']:.1f}x); zmq-pub {row['zmq-pub'][1]}")


if __name__ == "__main__":
    main()
