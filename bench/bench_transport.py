"""Transport throughput without a model: frames per second through the shared-memory ring (producer
process -> reader in this process), through a plain `multiprocessing.Queue` handoff of the same
frames, and through each sink on its own, at 576x320 and 1024x576.

    python -m bench.bench_transport            # 3000 frames per transport figure, 600 per sink, median of 3
    python -m bench.bench_transport --quick    # 200 frames, 1 run, 576x320 only (smoke test)

Two ways to count, each for the ring and for the Queue, side by side:
- made + handed over: the producer makes each frame's bytes (one copy from a set of 16 distinct
  frames, standing in for the uint8 conversion of the decoded pixels) where its transport wants them
  (ring: `reserve` -> the slot -> `commit`, as the runtime's producer does; Queue: a fresh array,
  then `put`), the reader gets it (ring: a `block` reader's view, `acquire`/`release`, as the
  runtime's lossless sinks; Queue: `get`, unpickled).
- handed over only: the frame already exists where the producer made it (ring: in its slot, the
  slots were filled once; Queue: an array in the producer's memory) and the transport moves it.
Also the ring's copying API (`write` copies into the slot, `read` copies out) for reference.
In all cases the reader checks the first row of every frame against the frame it should be, and
fps = frames / time from the first to the last frame read (after the first 64, so the ring's
in-place filling of its slots is not in the handoff figure). CPU/frame: process time of writer +
reader per frame (what the handoff takes away from the model on a small machine).
- sinks, each in this process, fps = frames / (writes + close): file (PyAV libx264 veryfast, fragmented
  mp4), zmq push (a PULL socket in a thread of this process receives every frame), zmq pub (a SUB in a
  thread; received count shown), stdout (to /dev/null), ffmpeg (x264 ultrafast to `-f null`, with the
  stream fps set to 1000 so the sink's real-time clock is not the limit).
Frames are the synthetic moving pattern (`continuityseq_stream.demo.synthetic_source`), 16 distinct ones cycled,
so the encoders see motion. Prints a short table.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import threading
import time

import numpy as np

from ._common import free_port, load, make_parser, median

DISTINCT = 16


def make_frames(width: int, height: int) -> np.ndarray:
    from continuityseq_stream.demo.synthetic_source import synthetic_frame

    return np.stack([synthetic_frame(i, width, height) for i in range(DISTINCT)])


# -- producer-process side (spawned children) ------------------------------------------------------
WARMUP = 64  # frames before the clock starts (the ring's 64 slots get filled once)


def _ring_writer(ring, width, height, n, mode, cpu) -> None:
    from continuityseq_stream.chunk import FrameMeta

    frames = make_frames(width, height)
    ring.wait_ready(30)
    ring.attach()
    c0 = time.process_time()
    for i in range(n):
        meta = FrameMeta(index=i, chunk=0, pts=i / 16, prompt="bench")
        if mode == "copy":
            while not ring.write(frames[i % DISTINCT], meta, timeout=1.0):
                pass
            continue
        seq = ring.reserve(timeout=1.0)
        while seq is None:
            seq = ring.reserve(timeout=1.0)
        if mode == "made" or i < WARMUP:  # "handoff": slot seq % 64 already holds frame seq % 16
            np.copyto(ring.slot(seq), frames[i % DISTINCT])
        ring.commit(seq, meta)
    cpu.value = time.process_time() - c0
    ring.close()
    ring.detach()


def _queue_writer(q, width, height, n, mode, cpu) -> None:
    frames = make_frames(width, height)
    c0 = time.process_time()
    for i in range(n):
        # "made": a fresh array each time, as a producer would make and hand over
        q.put((frames[i % DISTINCT].copy() if mode == "made" else frames[i % DISTINCT], i))
    q.put(None)
    q.close()
    q.join_thread()  # the feeder thread has pickled and written everything
    cpu.value = time.process_time() - c0


class _Clock:
    """Times the reader from frame WARMUP to the last one and checks each frame's first row."""

    def __init__(self, frames: np.ndarray) -> None:
        self.rows, self.got, self.t0, self.c0 = frames[:, 0], 0, None, None

    def frame(self, frame: np.ndarray, index: int) -> None:
        if not np.array_equal(frame[0], self.rows[index % DISTINCT]):
            raise AssertionError(f"frame {index}: wrong content")
        self.got += 1
        if self.got == WARMUP + 1:
            self.t0, self.c0 = time.monotonic(), time.process_time()

    def result(self, n: int, writer_cpu: float) -> tuple[float, float]:
        assert self.got == n, (self.got, n)
        return (n - 1 - WARMUP) / (time.monotonic() - self.t0), 1e6 * (time.process_time() - self.c0 + writer_cpu) / n


def ring_fps(width: int, height: int, n: int, mode: str = "made") -> tuple[float, float]:
    """(frames per second, CPU microseconds per frame in both processes together); mode "made",
    "handoff" or "copy" (see the module doc)."""
    from continuityseq_stream.runtime.ringbuffer import FrameRing, RingClosed

    ctx = mp.get_context("spawn")
    ring = FrameRing(64, max_readers=1, ctx=ctx)
    reader = ring.add_reader("block")
    ring.allocate(height, width)
    cpu = ctx.RawValue("d", 0.0)
    proc = ctx.Process(target=_ring_writer, args=(ring, width, height, n, mode, cpu), daemon=True)
    proc.start()
    clock = _Clock(make_frames(width, height))
    try:
        while True:
            try:
                item = ring.read(reader, timeout=30) if mode == "copy" else ring.acquire(reader, timeout=30)
            except RingClosed:
                break
            if item is None:
                raise RuntimeError("ring: no frame for 30 s")
            clock.frame(item[0], item[1].index)
            del item
            ring.release(reader)
    finally:
        proc.join(30)
        ring.destroy()
    return clock.result(n, cpu.value)


def queue_fps(width: int, height: int, n: int, mode: str = "made") -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue(maxsize=64)
    cpu = ctx.RawValue("d", 0.0)
    proc = ctx.Process(target=_queue_writer, args=(q, width, height, n, mode, cpu), daemon=True)
    proc.start()
    clock = _Clock(make_frames(width, height))
    while True:
        item = q.get(timeout=60)
        if item is None:
            break
        clock.frame(*item)
    result = clock.result(n, 0.0)
    proc.join(30)
    return result[0], result[1] + 1e6 * cpu.value / n


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
    p = make_parser(__doc__, quick="a tiny run (smoke test)")
    p.add_argument("--frames", type=int, default=3000, help="frames per ring / Queue figure")
    p.add_argument("--sink-frames", type=int, default=600, help="frames per sink figure")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", default="576x320,1024x576")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.sink_frames, args.repeats, args.sizes = 200, 200, 1, "576x320"
    args.frames = max(args.frames, WARMUP + 2)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in sizes:
            frames = make_frames(w, h)
            runs: dict = {k: [] for k in ("ring made", "queue made", "ring handoff", "queue handoff", "ring copy")}
            for _ in range(args.repeats):  # alternate, back to back
                for key in runs:
                    kind, mode = key.split()
                    runs[key].append((ring_fps if kind == "ring" else queue_fps)(w, h, args.frames, mode))
            row = {"size": f"{w}x{h}"}
            for key, results in runs.items():
                row[key] = (median([f for f, _ in results]), median([c for _, c in results]))
            for kind in ("file", "zmq-push", "zmq-pub", "stdout", "ffmpeg"):
                results = [sink_fps(kind, w, h, args.sink_frames, frames, tmp) for _ in range(args.repeats)]
                row[kind] = (median([f for f, _ in results]), results[-1][1])
            rows.append(row)
    print(f"transport fps (median of {args.repeats}; {args.frames} frames per ring/Queue run, {args.sink_frames} per "
          f"sink run; {load()})")
    print(f"{'size':>9} | {'made+handed over: ring':>22} {'queue':>7} {'ratio':>6} | {'handed over: ring':>17} "
          f"{'queue':>7} {'ratio':>6} | {'ring copy':>9} | {'file':>6} {'zmq-push':>8} {'zmq-pub':>7} {'stdout':>7} "
          f"{'ffmpeg':>6}")
    for row in rows:
        rm, qm, rh, qh = (row[k][0] for k in ("ring made", "queue made", "ring handoff", "queue handoff"))
        print(f"{row['size']:>9} | {rm:>22.0f} {qm:>7.0f} {rm / qm:>5.1f}x | {rh:>17.0f} {qh:>7.0f} {rh / qh:>5.1f}x | "
              f"{row['ring copy'][0]:>9.0f} | {row['file'][0]:>6.0f} {row['zmq-push'][0]:>8.0f} {row['zmq-pub'][0]:>7.0f} "
              f"{row['stdout'][0]:>7.0f} {row['ffmpeg'][0]:>6.0f}")
        cpu = {k: row[k][1] for k in ("ring made", "queue made", "ring handoff", "queue handoff", "ring copy")}
        print(f"{'':>9}   CPU/frame (us): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
              + f"; zmq-pub {row['zmq-pub'][1]}")


if __name__ == "__main__":
    main()
