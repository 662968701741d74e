"""Time to first frame vs `--times`: the first frame leaves the process after one chunk, whatever
the number of chunks asked for (the original script decoded everything at the end).

    python -m bench.bench_ttff                 # 3 alternating runs each of --times 1 and --times 16
    python -m bench.bench_ttff --quick         # 1 run each, smallest size (smoke test)

Each run is the real CLI on the tiny demo model (`--model demo-random --model-2d demo`) with the stdout sink
(`--sink -`, raw rgb24); this script reads the pipe and stamps the moment the first whole frame has
arrived, measured from just before the process is started (so Python/torch start-up, the producer
spawn, model loading and the first chunk are all inside). The run is then stopped (SIGTERM).
Prints one line: median seconds for each `--times` and the ratio t16/t1 (acceptance: within 10%).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

from ._common import bench_env, cli_command, load, make_parser, median, warm_demo_cache


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


def main(argv=None) -> None:
    p = make_parser(__doc__, quick="1 run each at 64x64, 4 frames, 2 steps", threads=1, threads_help="intra-op threads of the CLI's processes")
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
        for _ in range(args.repeats):  # alternate, so a load change hits both alike
            for times in (1, 16):
                runs[times].append(first_frame_seconds(times, args, env, tmp))
    t1, t16 = median(runs[1]), median(runs[16])
    print(f"ttff: --times 1 {t1:.2f}s, --times 16 {t16:.2f}s, ratio {t16 / t1:.3f} "
          f"(median of {args.repeats}; demo model {args.width}x{args.height}x{args.frames}, {args.steps} steps, "
          f"CLI --sink -, from process start; {load()})")


if __name__ == "__main__":
    main()
