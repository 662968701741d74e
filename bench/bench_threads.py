"""CPU threads under an outside load: the quick start's wall time idle and beside busy loops.

    python -m bench.bench_threads                          # the CLI's default threads, 1 idle/loaded pair
    python -m bench.bench_threads --threads default,1,2 --repeats 2
    python -m bench.bench_threads --quick                  # one chunk of 4 steps, one pair (smoke test)

Each figure is a whole CLI run, from process start to exit, of the README's quick start minus the
install: `continuityseq-stream --model demo --prompt "a white triangle moving up on a black
background" --times 16 --seed 0` (the trained demo model, 32x32, 16 chunks). An idle run and a
loaded run (`--loops` busy loops `python -c 'while 1: pass'`, started just before it and killed
after it, at normal priority, each in a session of its own like someone else's job) are measured
back to back, so that a change in the rest of the machine's load hits both alike; the figure is the
ratio loaded / idle (target: about 2 or less). The 1-minute load average before each run is printed
beside it (the machine may be shared).

`--threads` values: an int is passed to the CLI as `--threads N`; "default" passes nothing and
removes OMP_NUM_THREADS/MKL_NUM_THREADS from the environment (the CLI's own default).
`--wait-policy` sets OMP_WAIT_POLICY for the runs (the CLI sets "passive" itself when it is unset).
The producer's thread count is read from the run's log line. The CLI runs as
`python -m continuityseq_stream.cli` in a temporary folder with PYTHONPATH at this checkout; to
measure another checkout (e.g. before a change), set PYTHONPATH to it.
`--quick` is a smoke run: the first `--threads` setting only, one pair, one chunk of 4 steps.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from typing import Optional

from ._common import PYTHON, REPO, load, make_parser, start_busy_loops, stop_busy_loops

PROMPT = "a white triangle moving up on a black background"
#: --model: the quick start's trained demo, or the random-weight tiny model at a size where a chunk
#: is mostly model compute (more work per chunk: where intra-op threads matter most)
MODELS = {"demo": ["--model", "demo"],
          "random": ["--model", "demo-random", "--model-2d", "demo", "-WI", "128", "-HI", "128", "-T", "8", "-s", "4"]}
#: the producer's log line that says how many threads torch got (pipeline/chunk_source.py)
THREADS_LOGGED = re.compile(r"attention \w+, (\d+) CPU threads?")


def cli_args(setting: str, args) -> list[str]:
    """The measured command line for one `--threads` setting."""
    cmd = [PYTHON, "-m", "continuityseq_stream.cli", *MODELS[args.model], "--prompt", PROMPT,
           "--times", str(args.times), "--seed", "0", *args.extra]
    return cmd if setting == "default" else [*cmd, "--threads", setting]


def cli_env(setting: str, wait_policy: Optional[str]) -> dict:
    """Offline, this checkout importable (unless PYTHONPATH names another), the setting's threads."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.setdefault("PYTHONPATH", str(REPO))
    if setting == "default":  # the CLI's own default: nothing exported
        env.pop("OMP_NUM_THREADS", None)
        env.pop("MKL_NUM_THREADS", None)
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    return env


def run_once(setting: str, args, loops: int, workdir: str) -> dict:
    """One CLI run with `loops` busy loops beside it: wall seconds (None past the timeout), the
    producer's threads as logged, and the load average before it."""
    cmd = [*cli_args(setting, args), "--output-dir", os.path.join(workdir, "out")]
    before = load()
    busy = start_busy_loops(loops)
    try:
        t0 = time.monotonic()
        # a session of its own: past the timeout the CLI goes together with its producer process
        proc = subprocess.Popen(cmd, cwd=workdir, env=cli_env(setting, args.wait_policy), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"seconds": None, "threads": "?", "load": before}
        seconds = time.monotonic() - t0
    finally:
        stop_busy_loops(busy)
    if proc.returncode != 0:
        raise RuntimeError(f"the CLI failed (status {proc.returncode}): {err[-1500:]}")
    found = THREADS_LOGGED.findall(err)
    return {"seconds": seconds, "threads": found[0] if found else "?", "load": before}


def _fmt(seconds: Optional[float]) -> str:
    return "timeout" if seconds is None else f"{seconds:.1f}s"


def parse_settings(p, text: str) -> list[str]:
    """`--threads default,1,2` -> ["default", "1", "2"]; a usage error (exit 2) for anything else."""
    settings = [s.strip() for s in text.split(",") if s.strip()]
    if not settings:
        p.error("--threads: give 'default' and/or thread counts, comma-separated")
    for s in settings:
        if s != "default" and not (s.isdigit() and int(s) >= 1):
            p.error(f"--threads: {s!r} is neither 'default' nor a thread count >= 1")
    return settings


def main(argv=None) -> None:
    p = make_parser(__doc__, quick="one idle/loaded pair of one 4-step chunk, first setting only (smoke test)")
    p.add_argument("--threads", default="default", help="comma-separated: default and/or thread counts")
    p.add_argument("--repeats", type=int, default=1, help="idle/loaded pairs per setting")
    p.add_argument("--times", type=int, default=16, help="chunks per run (the quick start: 16)")
    p.add_argument("--loops", type=int, default=2, help="busy loops beside the loaded run")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a run counts as 'timeout'")
    p.add_argument("--wait-policy", choices=("passive", "active"), default=None, help="OMP_WAIT_POLICY for the runs")
    p.add_argument("--model", choices=sorted(MODELS), default="demo",
                   help="demo: the quick start; random: demo-random 128x128, 8 frames, 4 steps per chunk")
    args = p.parse_args(argv)
    settings = parse_settings(p, args.threads)
    args.extra = []
    if args.quick:  # start-up dominates anyway: one short chunk is enough to see the whole path work
        settings, args.times, args.repeats, args.extra = settings[:1], 1, 1, ["-s", "4"]
    with tempfile.TemporaryDirectory() as tmp:
        # the trained demo is there (and its files in the page cache) before anything is timed
        subprocess.run([PYTHON, "-c", "from continuityseq_stream.demo.trained import trained_demo_path as p; "
                        "assert p(), 'the trained demo model is missing'"], cwd=tmp, env=cli_env("1", None), check=True)
        print(f"threads: {' '.join(MODELS[args.model] + args.extra)} --times {args.times}, whole CLI run, idle vs "
              f"{args.loops} busy loops, back to back; {os.cpu_count()} cpus; "
              f"OMP_WAIT_POLICY {args.wait_policy or 'unset'}", flush=True)
        for setting in settings:
            for _ in range(args.repeats):
                idle = run_once(setting, args, 0, tmp)
                busy = run_once(setting, args, args.loops, tmp)
                ratio = (f"x{busy['seconds'] / idle['seconds']:.2f}"
                         if idle["seconds"] and busy["seconds"] else "n/a")
                print(f"--threads {setting} (producer: {idle['threads']} thread(s)): idle {_fmt(idle['seconds'])} "
                      f"({idle['load']}), loaded {_fmt(busy['seconds'])} ({busy['load']}): {ratio}", flush=True)


if __name__ == "__main__":
    main()
