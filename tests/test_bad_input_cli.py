"""Issue #11 point 6, end to end: every bad input of the list is refused by the real CLI (a child
process, as a user runs it) with exit status 2, exactly one line on stderr naming the flag, no
traceback, no output file, and before the model loads.

"Before the model loads" is checked, not timed: the child replaces `Producer.start` (the model only
ever loads in the producer process) with a stub that leaves a marker file and exits 97 at once. A
check that comes too late therefore fails the test quickly instead of running a model for minutes.
Each case failed on the code before the fix (traceback, exit 1, two lines, or the producer started).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

PROG = "continuityseq-stream"

#: the child: the CLI with a producer that may not start
RUNNER = r"""
import os, sys
marker = sys.argv[1]
from continuityseq_stream.runtime import producer

def _must_not_start(self, *args, **kwargs):
    with open(marker, "w") as f:
        f.write("the producer was started: the input got past every check")
    os._exit(97)

producer.Producer.start = _must_not_start
from continuityseq_stream.cli import main
main(sys.argv[2:], prog_name="continuityseq-stream")
"""


def bomb_png(path: Path, side: int = 20_000) -> Path:
    """A PNG whose header declares side x side RGB pixels (400 megapixels, over Pillow's limit of
    about 179): a few hundred bytes on disk; Pillow refuses it from the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


CASES = ["segment pattern", "decompression bomb", "seed 2**80", "fps inf", "fps 0.0001", "guidance nan",
         "preset bogus", "width 100000", "ring frames 1e8", "upscaler on 4x4 latents", "only sink fails at setup"]


def cases(tmp: Path) -> dict:
    """case -> (extra CLI arguments, the flag the one line must name)."""
    return {
        "segment pattern": (["--sink", f"file:{tmp}/out_%.mp4?segment=5"], "--sink"),
        "decompression bomb": (["-i", str(bomb_png(tmp / "bomb.png"))], "-i/--init-image"),
        "seed 2**80": (["--seed", str(2**80)], "-r/--seed"),
        "fps inf": (["-f", "inf"], "-f/--fps"),
        "fps 0.0001": (["-f", "0.0001"], "-f/--fps"),
        "guidance nan": (["-g", "nan"], "-g/--guidance-scale"),
        "preset bogus": (["--sink", f"file:{tmp}/x.mp4?preset=bogus"], "--sink"),
        "width 100000": (["-WI", "100000"], "-WI/--width"),
        "ring frames 1e8": (["--ring-frames", "100000000"], "--ring-frames"),
        "upscaler on 4x4 latents": (["-u", "--upscaler", "demo"], "-u/--upscale"),
        "only sink fails at setup": (["--sink", f"file:{tmp}/no-such-dir/x.mp4"], "--sink"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_before_the_model_loads(tmp_path, case):
    args, flag = cases(tmp_path)[case]
    out_dir, marker = tmp_path / "out", tmp_path / "producer-started"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               XDG_CACHE_HOME=str(tmp_path.parent / "xdg-cache-bad-input"))
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(marker), "--model", "demo", "-p", "a red circle moving left on a gray background",
         "-t", "1", "-o", str(out_dir), *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    print(f"{case}: exit {proc.returncode} in {time.monotonic() - t0:.1f} s: {proc.stderr.strip()}")
    assert not marker.exists(), f"{case}: the producer (and so the model) was started: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{PROG}: error: {flag}"), lines[0]
    assert proc.stdout == ""
    written = [p for p in tmp_path.rglob("*") if p.suffix in (".mp4", ".mkv")]
    assert written == [], written
