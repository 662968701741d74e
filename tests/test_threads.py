"""CPU threads of the producer (`--threads`) and a main process free of torch.

The producer's torch must run the thread count that was asked for, with OpenMP's passive wait policy
set before torch is loaded there; the main process of a run never imports torch or the model stack
(it only moves frames). Both are checked in real processes: a probe source reports from inside the
producer, and a CLI run in a child Python reports the modules its main process holds afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from continuityseq_stream.runtime import threads
from continuityseq_stream.config import GenerationConfig
from continuityseq_stream.errors import ConfigError
from continuityseq_stream.runtime.loop import RuntimeOptions, run
from continuityseq_stream.sinks.base import Sink


# -- the default and the checks (no processes) ---------------------------------------------------
def test_default_is_the_exported_omp_num_threads_else_the_cpus_minus_one():
    assert threads.default_threads({"OMP_NUM_THREADS": "3"}) == 3
    spare = max(1, threads.available_cpus() - 1)
    assert threads.default_threads({}) == spare
    assert threads.default_threads({"OMP_NUM_THREADS": "4,2"}) == spare  # a nested setting is not a count
    assert threads.default_threads({"OMP_NUM_THREADS": "0"}) == spare
    assert threads.resolve_threads(None, {"OMP_NUM_THREADS": "5"}) == 5
    assert threads.resolve_threads(2, {"OMP_NUM_THREADS": "5"}) == 2  # --threads wins


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_thread_counts_are_one_clear_error(bad):
    with pytest.raises(ConfigError, match=r"^--threads: got .*; use a number of CPU threads >= 1"):
        threads.resolve_threads(bad)
    with pytest.raises(ConfigError, match="--threads"):
        RuntimeOptions(threads=bad)


def test_the_child_waits_passively_unless_the_user_chose_a_policy():
    assert threads.child_environment(3, {}) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3",
                                                "OMP_WAIT_POLICY": "passive"}
    assert "OMP_WAIT_POLICY" not in threads.child_environment(1, {"OMP_WAIT_POLICY": "active"})


@pytest.mark.slow
def test_the_cli_rejects_bad_threads_in_one_line():
    out = subprocess.run([sys.executable, "-m", "continuityseq_stream.cli", "--model", "demo-random", "-p", "x",
                          "--threads", "0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--threads: got 0" in lines[0], out.stderr


# -- the producer process ------------------------------------------------------------------------
class _Prompts(Sink):
    """Keeps each frame's prompt."""

    def __init__(self) -> None:
        super().__init__("prompts")
        self.prompts: list[str] = []

    def _open(self, info) -> None:
        pass

    def _write(self, frame, meta) -> None:
        self.prompts.append(meta.prompt)

    def _close(self) -> None:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("asked", [1, 3])
def test_producer_torch_runs_the_threads_asked_with_passive_waiting(asked, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what the user exported; --threads overrides it
    sink = _Prompts()
    config = GenerationConfig(prompt="p", width=16, height=16, num_frames=2, times=1)
    code = run(config, [sink], RuntimeOptions(source="thread_probe:probe_stream", threads=asked, status_interval=0))
    assert code == 0 and len(sink.prompts) == 2
    report = json.loads(sink.prompts[0])
    assert report["threads"] == asked  # 3 is more than this machine may have: torch still runs 3
    assert report["omp_num_threads"] == str(asked)
    assert report["torch_before"] is False  # nothing loaded torch in the producer before the settings
    assert report["wait_policy"] == "passive"


# -- a whole CLI run ------------------------------------------------------------------------------
# The CLI in a child Python; afterwards its main process prints which heavy modules it holds.
# (`python -c` has no main module file, so the producer process does not re-run this code.)
CLI_PROBE = """
import json, sys
from continuityseq_stream.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = ("torch", "diffusers", "transformers", "accelerate", "safetensors")
print(json.dumps({"code": code, "loaded": sorted(m for m in heavy if m in sys.modules)}), file=sys.stderr)
"""


@pytest.mark.slow
def test_a_cli_run_keeps_torch_out_of_the_main_process_and_the_producer_runs_threads_asked(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path.parent / "xdg-cache-threads"))
    video = tmp_path / "v.mp4"
    out = subprocess.run(
        [sys.executable, "-c", CLI_PROBE, "--model", "demo-random", "-p", "a test", "-WI", "64", "-HI", "48",
         "-T", "2", "-s", "1", "-r", "0", "--threads", "3", "--sink", f"file:{video}", "-o", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env)
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "loaded": []}, out.stderr[-3000:]
    assert video.stat().st_size > 0
    # the producer's own line, written after torch is imported there: torch.get_num_threads()
    threads_logged = re.findall(r"attention \w+, (\d+) CPU threads?", out.stderr)
    assert threads_logged == ["3"], out.stderr[-3000:]


PREFLIGHT_PROBE = """
import json, sys
from continuityseq_stream.cli.app import build_run_config, main, run
from continuityseq_stream.errors import ContinuitySeqError

results = []
for args in json.loads(sys.argv[1]):
    try:
        with run.make_context("run", list(args)) as ctx:  # the flags -> options, as `run` gets them
            config = build_run_config(dict(ctx.params))[0]
            results.append([config.width, config.height])
    except ContinuitySeqError as e:
        results.append(str(e))
heavy = ("torch", "diffusers", "transformers", "accelerate", "safetensors")
print(json.dumps({"results": results, "loaded": sorted(m for m in heavy if m in sys.modules)}))
"""


@pytest.mark.slow
def test_the_preflight_of_init_files_models_and_upscaler_imports_no_torch(tmp_path):
    import av
    import numpy as np
    from PIL import Image

    image, video = tmp_path / "i.png", tmp_path / "v.mp4"
    Image.fromarray(np.full((50, 70, 3), 90, np.uint8)).save(image)
    with av.open(str(video), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 80, "yuv420p"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((80, 96, 3), 20 * i, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    base = ["-p", "x", "-o", str(tmp_path / "out")]
    cases = [
        [*base, "--model", "demo-random", "-i", str(image)],  # the size comes from the image: 70x50 -> 64x48
        [*base, "--model", "demo-random", "--init-video", str(video)],  # 96x80
        [*base, "--model", "demo"],  # the trained demo's folder and settings (32x32)
        [*base, "--model", "demo-random", "-WI", "64", "-HI", "64", "-u", "--upscaler", "demo"],
        [*base, "--model", "demo-random", "-i", str(tmp_path / "missing.png")],
        [*base, "--model", str(tmp_path / "no-model")],
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))
    out = subprocess.run([sys.executable, "-c", PREFLIGHT_PROBE, json.dumps(cases)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], report
    sizes, errors = report["results"][:4], report["results"][4:]
    assert sizes == [[64, 48], [96, 80], [32, 32], [64, 64]]
    assert errors[0].startswith("init_image: ") and "missing.png' does not exist" in errors[0]
    assert errors[1].startswith("model: ") and "no-model' does not exist" in errors[1]
