"""bin/install waits for apt's locks (a fresh cloud VM runs unattended-upgrades at boot) instead of
failing at once. Its two lock functions are run by bash against a lock file that another process
holds with fcntl, as apt and dpkg do."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

INSTALL = Path(__file__).resolve().parent.parent / "bin" / "install"

# the functions of bin/install, without running the script
SCRIPT = """
eval "$(sed -n '/^lock_free()/,/^}/p;/^wait_for_lock()/,/^}/p' "$INSTALL")"
SUDO=""; PY="$PYTHON_BIN"; LOCK_WAIT="$WAIT"
if lock_free "$LOCK"; then echo free; else echo held; fi
start=$(date +%s); wait_for_lock "$LOCK"; echo "waited $(( $(date +%s) - start ))"
"""

HOLD = "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(float(sys.argv[2]))"


def _run(lock: Path, wait: int, hold_for: float) -> tuple[subprocess.CompletedProcess, float]:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), str(hold_for)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        out = subprocess.run(["bash", "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                             env={"PATH": "/usr/bin:/bin", "INSTALL": str(INSTALL), "PYTHON_BIN": sys.executable,
                                  "WAIT": str(wait), "LOCK": str(lock)})
        return out, time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_install_waits_for_a_held_apt_lock_then_goes_on(tmp_path):
    lock = tmp_path / "lock"
    lock.touch()
    out, took = _run(lock, wait=60, hold_for=4)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "held"
    assert took >= 3  # it waited for the holder to let go
    assert out.stderr.count("waiting for another apt/dpkg") == 1  # said once, not every 5 s


@pytest.mark.slow
def test_install_gives_up_after_the_wait_with_one_line(tmp_path):
    lock = tmp_path / "lock"
    lock.touch()
    out, _ = _run(lock, wait=5, hold_for=60)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("bin/install: ") and "still held after 5s" in last and "APT_LOCK_WAIT" in last


@pytest.mark.slow  # it starts bash (conftest refuses that in the quick tier)
def test_a_lock_file_nobody_holds_or_that_does_not_exist_is_free(tmp_path):
    for lock in (tmp_path / "missing", tmp_path / "idle"):
        if lock.name == "idle":
            lock.touch()
        out = subprocess.run(["bash", "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "INSTALL": str(INSTALL), "PYTHON_BIN": sys.executable,
                                  "WAIT": "5", "LOCK": str(lock)})
        assert out.returncode == 0 and out.stdout.split() == ["free", "waited", "0"], out
    assert not (tmp_path / "missing").exists()  # looking did not create it


def test_apt_get_is_given_the_lock_timeout():
    text = INSTALL.read_text()
    assert text.count('apt-get -o DPkg::Lock::Timeout="$LOCK_WAIT"') == 2  # update and install
    assert "wait_for_lock /var/lib/apt/lists/lock" in text
