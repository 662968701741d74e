"""How many CPU threads the producer's torch uses, chosen on purpose (`--threads`).

Why this matters: the producer and the main process are two processes. If each ran torch's default
intra-op pool (one OpenMP thread per core) they would oversubscribe the cores, and OpenMP's
spin-waiting makes that collapse under any outside load: a parallel region waits at its barrier for
a thread that another process holds the core of, for a whole scheduler time slice, many times per
UNet step (a demo chunk measured 64-131 s instead of 0.7 s on a busy 2-core machine).

So:
- only the producer runs torch (the main process never imports it, see preflight.py);
- its intra-op threads are `--threads N`; by default the `OMP_NUM_THREADS` the user exported, else
  the CPUs this process may run on minus one (at least 1), which leaves a core for the main process,
  the sinks and ffmpeg;
- OpenMP waits passively (`OMP_WAIT_POLICY=passive`, unless the user set a policy): an idle thread
  sleeps instead of spinning on a core another process could use. OpenMP reads that variable once,
  when torch's library is loaded, so the producer sets it before anything imports torch there.

Nothing here changes the calling process: `child_environment` returns the variables, `apply_in_child`
is called by the producer process on itself.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Optional

from ..errors import ConfigError

__all__ = ["available_cpus", "default_threads", "resolve_threads", "child_environment", "apply_in_child",
           "set_torch_threads"]

#: the variables that size the thread pools of torch's OpenMP and MKL
_POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under `taskset` or a cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def _env_threads(environ: Mapping[str, str]) -> Optional[int]:
    """`OMP_NUM_THREADS` as a positive int, or None when unset or not a plain number (e.g. "4,2")."""
    value = environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def default_threads(environ: Optional[Mapping[str, str]] = None) -> int:
    """The producer's threads when `--threads` is not given (see the module docstring)."""
    from_env = _env_threads(os.environ if environ is None else environ)
    return from_env if from_env is not None else max(1, available_cpus() - 1)


def resolve_threads(threads: Optional[int], environ: Optional[Mapping[str, str]] = None) -> int:
    """`--threads` (None: the default) -> a thread count; ConfigError for anything but an int >= 1."""
    if threads is None:
        return default_threads(environ)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"--threads: got {threads!r}; use a number of CPU threads >= 1 "
                          f"(this machine has {available_cpus()} CPUs; leave it unset for {default_threads(environ)})")
    return threads


def child_environment(threads: int, environ: Optional[Mapping[str, str]] = None) -> dict:
    """The environment variables the producer sets on itself before torch is imported there."""
    environ = os.environ if environ is None else environ
    values = {name: str(threads) for name in _POOL_VARIABLES}
    if not environ.get("OMP_WAIT_POLICY"):
        values["OMP_WAIT_POLICY"] = "passive"
    return values


def apply_in_child(threads: int) -> bool:
    """In the producer process, first thing: export the thread variables for the torch to come.
    Returns False when torch was already imported (its OpenMP wait policy is then the one it
    started with; `set_torch_threads` still sizes its pool)."""
    os.environ.update(child_environment(threads))
    return "torch" not in sys.modules


def set_torch_threads(threads: int) -> Optional[int]:
    """Size the intra-op pool of an imported torch (it does not take every `OMP_NUM_THREADS` as it
    is: 3 on a 2-core machine gave 2); returns what torch reports, None when torch is not loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    torch.set_num_threads(threads)
    return torch.get_num_threads()
