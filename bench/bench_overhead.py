"""Streaming overhead: the full CLI run (producer process -> shared-memory ring -> file + zmq push +
stdout sinks) vs the bare `pipe.stream()` loop, same demo model, same flags, same seed.

    python -m bench.bench_overhead             # 3 alternating pairs, 128x128x8, 6 steps, 8 chunks
    python -m bench.bench_overhead --quick     # 1 pair, tiny sizes (smoke test)

Method. Loading differs by design (the CLI starts a second Python process for the producer), so the
headline figure is measured from the first frame on: the steady-state time of chunks 1..N-1.
- bare: a fresh process runs `session.open_stream(config)` (what the producer runs: same loading,
  same init image, same seed) and stamps the moment chunk 0 and chunk N-1 come out of the iterator.
- CLI: a fresh `python -m continuityseq_stream.cli ... --sink file:X.mp4 --sink zmq+push://... --sink -`;
  this script reads stdout (raw frames) and a ZeroMQ PULL socket, and stamps the arrival of the first
  frame and of the last frame (the later of the two sinks).
overhead = CLI window / bare window - 1 (acceptance: < 5%). Runs alternate bare/CLI back to back.
The headline uses the fastest window of each kind (min of N: the run least disturbed by other work
on a shared machine, as timeit does); the medians are printed beside it. The process-start-to-exit
wall times of both are printed too (they include the producer's extra start-up, a fixed cost per run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time

from ._common import PYTHON, REPO, bench_env, cli_command, free_port, load, make_parser, median, warm_demo_cache


def bare(args) -> None:
    """Child mode: the bare loop; prints a JSON line of timestamps (monotonic seconds since start)."""
    t0 = time.monotonic()
    from continuityseq_stream.config import GenerationConfig
    from continuityseq_stream.pipeline.chunk_source import open_stream

    config = GenerationConfig(prompt="a red ball bouncing", model="demo-random", model_2d="demo", num_frames=args.frames,
                              width=args.width, height=args.height, num_steps=args.steps, guidance_scale=7.5,
                              seed=7, times=args.chunks, fps=16.0)
    stamps, frames = [], 0
    for chunk in open_stream(config, progress=False):
        frames += chunk.frames.shape[0]
        stamps.append(time.monotonic() - t0)
    print(json.dumps({"first": stamps[0], "last": stamps[-1], "end": time.monotonic() - t0, "frames": frames}))


def run_bare(args, env) -> dict:
    cmd = [PYTHON, "-m", "bench.bench_overhead", "--bare", "--width", str(args.width), "--height", str(args.height),
           "--frames", str(args.frames), "--steps", str(args.steps), "--chunks", str(args.chunks)]
    t0 = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=REPO).stdout
    wall = time.monotonic() - t0
    r = json.loads(out.strip().splitlines()[-1])
    return {"window": r["last"] - r["first"], "wall": wall, "frames": r["frames"]}


def run_cli(args, env, tmp) -> dict:
    import zmq

    port = free_port()
    total = args.chunks * args.frames
    size = args.width * args.height * 3
    cmd = cli_command(width=args.width, height=args.height, frames=args.frames, steps=args.steps, times=args.chunks,
                      extra=["-o", tmp, "--sink", f"file:{tmp}/out.mp4", "--sink", f"zmq+push://127.0.0.1:{port}",
                             "--sink", "-"])
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.connect(f"tcp://127.0.0.1:{port}")
    stamps = {"zmq": [], "stdout": []}

    def read_zmq():
        while len(stamps["zmq"]) < total:
            if not pull.poll(60_000):
                return
            header, _ = pull.recv_multipart()
            if b'"eos"' in header:
                return
            stamps["zmq"].append(time.monotonic())

    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    zt = threading.Thread(target=read_zmq, daemon=True)
    zt.start()
    while True:
        data = proc.stdout.read(size)
        if len(data) < size:
            break
        stamps["stdout"].append(time.monotonic())
    proc.wait()
    wall = time.monotonic() - t0
    zt.join(10)
    pull.close(linger=0)
    if proc.returncode or len(stamps["stdout"]) != total or len(stamps["zmq"]) != total:
        raise RuntimeError(f"CLI run: status {proc.returncode}, stdout {len(stamps['stdout'])} / zmq "
                           f"{len(stamps['zmq'])} of {total} frames")
    first = min(stamps["stdout"][0], stamps["zmq"][0])
    last = max(stamps["stdout"][-1], stamps["zmq"][-1])
    return {"window": last - first, "wall": wall, "frames": total}


def main(argv=None) -> None:
    p = make_parser(__doc__, quick="1 pair, 64x64x4, 2 steps, 3 chunks", threads=1, threads_help="intra-op threads of the measured processes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.width, args.height, args.frames, args.steps, args.chunks = 1, 64, 64, 4, 2, 3
    if args.bare:
        return bare(args)
    env = bench_env(args.threads)
    warm_demo_cache(env)
    bares, clis = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # back to back pairs
            bares.append(run_bare(args, env))
            clis.append(run_cli(args, env, tmp))
    bmin, cmin = min(r["window"] for r in bares), min(r["window"] for r in clis)
    bw, cw = median([r["window"] for r in bares]), median([r["window"] for r in clis])
    bwall, cwall = median([r["wall"] for r in bares]), median([r["wall"] for r in clis])
    print(f"overhead: chunks 1..{args.chunks - 1} bare {bmin:.2f}s, CLI file+zmq+stdout {cmin:.2f}s, ratio "
          f"{cmin / bmin:.3f} = {100 * (cmin / bmin - 1):+.1f}% (min of {args.repeats}); medians {bw:.2f}s / {cw:.2f}s "
          f"= {100 * (cw / bw - 1):+.1f}%; wall incl. start-up bare {bwall:.1f}s CLI {cwall:.1f}s (demo model "
          f"{args.width}x{args.height}x{args.frames}, {args.steps} steps, {args.chunks} chunks; {load()})")


if __name__ == "__main__":
    main()
