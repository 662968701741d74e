"""Time to first frame vs `--times`, and vs the bare pipeline in one process.

1. The first frame leaves the process after one chunk, whatever the number of chunks asked for (the
   original script decoded everything at the end): `--times 1` vs `--times 16`.
2. Start-up: the CLI's first frame vs a bare single-process run of the same model and settings (what
   the original script is: import torch and the model stack, load, generate): the bare
   `open_stream()` (`pipe.stream()` with the CLI's first frame, seed and selector) until its first
   chunk is decoded, and the bare *whole* one-chunk run (that chunk also written to an mp4, process
   exit), which is what the original's single-chunk run amounts to. The CLI runs two processes
   (the main one with the sinks, the producer with the model): its first frame should arrive no
   later than the bare whole run.

    python -m bench.bench_ttff                 # 3 alternating runs each: bare, --times 1, --times 16
    python -m bench.bench_ttff --quick         # 1 run each, smallest size (smoke test)

Each run is the real CLI on the tiny demo model (`--model demo-random --model-2d demo`) with the stdout sink
(`--sink -`, raw rgb24); this script reads the pipe and stamps the moment the first whole frame has
arrived, measured from just before the process is started (so Python/torch start-up, the producer
spawn, model loading and the first chunk are all inside). The run is then stopped (SIGTERM).
The bare run is a `python -c` child timed the same way (from just before it starts): it prints a
line when the first chunk is decoded, then writes it to an mp4 and exits.
Prints one line: median seconds for each `--times` and the ratio t16/t1 (acceptance: within 10%),
then the bare figures and the ratio of the CLI's `--times 1` first frame to the bare whole run
(acceptance: <= 1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

from ._common import PYTHON, bench_env, cli_command, load, make_parser, median, warm_demo_cache


def first_frame_seconds(times: int, args, env: dict, outdir: str) -> float:
    cmd = cli_command(width=args.width, height=args.height, frames=args.frames, steps=args.steps, times=times,
                      extra=["--sink", "-", "-o", outdir])
    size = args.width * args.height * 3
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        got = 0
        while got < size:
            data = proc.stdout.read1(size - got) if hasattr(proc.stdout, "read1") else proc.stdout.read(size - got)
            if not data:
                raise RuntimeError(f"--times {times}: the CLI ended before the first frame (status {proc.wait()})")
            got += len(data)
        elapsed = time.monotonic() - t0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return elapsed


# The bare run: one process, the same work as the CLI's producer, no runtime around it.
BARE = """
import sys, time
from continuityseq_stream.config import GenerationConfig
from continuityseq_stream.pipeline.chunk_source import open_stream
w, h, frames, steps, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
config = GenerationConfig(prompt="a red ball bouncing", model="demo-random", model_2d="demo", width=w, height=h,
                          num_frames=frames, num_steps=steps, guidance_scale=7.5, seed=7, times=1, fps=16.0)
for chunk in open_stream(config, progress=False):
    print("chunk", flush=True)
    import av
    with av.open(out, "w") as c:
        s = c.add_stream("libx264", rate=16)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for f in chunk.frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
"""


def bare_seconds(args, env: dict, outdir: str) -> tuple[float, float]:
    """(seconds to the bare run's first chunk, seconds to its exit after writing the mp4)."""
    cmd = [PYTHON, "-c", BARE, str(args.width), str(args.height), str(args.frames), str(args.steps),
           os.path.join(outdir, "bare.mp4")]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    line = proc.stdout.readline()
    first = time.monotonic() - t0
    code = proc.wait()
    whole = time.monotonic() - t0
    if line.strip() != b"chunk" or code != 0:
        raise RuntimeError(f"the bare run failed (status {code})")
    return first, whole


def main(argv=None) -> None:
    p = make_parser(__doc__, quick="1 run each at 64x64, 4 frames, 2 steps", threads=1,
                    threads_help="intra-op threads (OMP_NUM_THREADS) of every run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.width, args.height, args.frames, args.steps = 1, 64, 64, 4, 2
    with tempfile.TemporaryDirectory() as tmp:
        env = bench_env(args.threads)
        warm_demo_cache(env)
        runs = {1: [], 16: []}
        bare_first, bare_whole = [], []
        for _ in range(args.repeats):  # alternate, so a load change hits all alike
            first, whole = bare_seconds(args, env, tmp)
            bare_first.append(first)
            bare_whole.append(whole)
            for times in (1, 16):
                runs[times].append(first_frame_seconds(times, args, env, tmp))
    t1, t16 = median(runs[1]), median(runs[16])
    b1, bw = median(bare_first), median(bare_whole)
    print(f"ttff: --times 1 {t1:.2f}s, --times 16 {t16:.2f}s, ratio {t16 / t1:.3f} "
          f"(median of {args.repeats}; demo model {args.width}x{args.height}x{args.frames}, {args.steps} steps, "
          f"CLI --sink -, from process start; {load()})")
    print(f"start-up: CLI --times 1 first frame {t1:.2f}s; bare open_stream() in one process: first chunk "
          f"{b1:.2f}s, whole one-chunk run with its mp4 {bw:.2f}s; CLI / bare whole {t1 / bw:.3f}, "
          f"CLI / bare first chunk {t1 / b1:.3f} (runs: CLI {_fmt(runs[1])}, bare whole {_fmt(bare_whole)}; "
          f"threads {args.threads})")


def _fmt(values) -> str:
    return " ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
