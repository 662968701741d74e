"""The test suite, N times in a row, beside K CPU-burning processes: pass/fail and wall time of each.

The hardening promise is that nothing in the suite (preview, RTMP, WebRTC, stop deadlines) depends on
an idle machine. Each busy loop (`python -c 'while 1: pass'`) runs in its own session, as someone
else's job would, and is killed when the runs end. Figures go to docs/reliability.md and the README.

    python -m bench.bench_suite_load --runs 3 --burners 2 -- -m "not slow"
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ._common import PYTHON, REPO, load, make_parser, start_busy_loops, stop_busy_loops


def run_suite(pytest_args: list[str], log_path: str | None) -> tuple[int, float, str]:
    """One pytest run; its return code, wall seconds and pytest's summary line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    start = time.monotonic()
    with open(log_path or os.devnull, "w") as log:
        proc = subprocess.run([PYTHON, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *pytest_args],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log.write(proc.stdout)
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    return proc.returncode, time.monotonic() - start, (lines[-1] if lines else "")


def main(argv=None) -> int:
    p = make_parser(__doc__, quick="one run of one quick test file beside the burners (smoke test)")
    p.add_argument("--runs", type=int, default=3, help="suite runs in a row (default 3)")
    p.add_argument("--burners", type=int, default=2, help="busy loops beside the suite (default 2)")
    p.add_argument("--log-dir", default=None, help="keep each run's pytest output here")
    p.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest (default: the whole suite)")
    args = p.parse_args(argv)
    pytest_args = list(args.pytest_args)
    runs = args.runs
    if args.quick:
        runs, pytest_args = 1, ["tests/test_errors.py"]
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    print(f"suite beside {args.burners} busy loop(s), {runs} run(s), {os.cpu_count()} cpus", flush=True)
    burners = start_busy_loops(args.burners)
    failed = 0
    try:
        for i in range(1, runs + 1):
            log_path = os.path.join(args.log_dir, f"run{i}.log") if args.log_dir else None
            rc, wall, summary = run_suite(pytest_args, log_path)
            failed += rc != 0
            print(f"run {i}: {'passed' if rc == 0 else f'FAILED (rc {rc})'} in {wall / 60:.1f} min "
                  f"({load()}): {summary}", flush=True)
    finally:
        stop_busy_loops(burners)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
