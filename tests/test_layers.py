"""The import-linter contract in setup.cfg ([importlinter]): the layers, the torch-free runtime, the
torch-free checks of the main process (preflight) and no import circles hold, and a deliberately wrong import breaks them (so the check can fail)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package under `root` with `root`'s setup.cfg (no cache left behind)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([LINT, "--config", str(root / "setup.cfg"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _copy(tmp_path: Path) -> Path:
    """A copy of the package and its setup.cfg to break on purpose."""
    shutil.copytree(ROOT / "continuityseq_stream", tmp_path / "continuityseq_stream",
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    return tmp_path


@pytest.mark.slow
def test_the_contract_holds():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 kept, 0 broken" in out.stdout


@pytest.mark.slow
def test_the_runtime_importing_the_pipeline_breaks_it(tmp_path):
    root = _copy(tmp_path)
    status = root / "continuityseq_stream" / "runtime" / "status.py"
    status.write_text(status.read_text() + "\nfrom ..pipeline.pipeline import ContinuitySeqPipeline  # wrong\n")
    out = _lint(root)
    assert out.returncode == 1
    text = " ".join(out.stdout.split())
    assert "continuityseq_stream.runtime is not allowed to import continuityseq_stream.pipeline" in text
    assert "continuityseq_stream.runtime.status -> continuityseq_stream.pipeline.pipeline" in text
    # the layers allow it (runtime sits above); the forbidden contracts do not: the runtime's own, and the
    # main process's (the CLI imports the runtime)
    assert "2 kept, 2 broken" in text


@pytest.mark.slow
def test_an_import_circle_breaks_it(tmp_path):
    root = _copy(tmp_path)
    errors = root / "continuityseq_stream" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom .config import GenerationConfig  # wrong: a circle\n")
    out = _lint(root)
    assert out.returncode == 1
    text = " ".join(out.stdout.split())
    assert "No import circles between sibling modules or packages BROKEN" in text
    assert "Layers: " in text and "core types BROKEN" in text


@pytest.mark.slow
def test_the_init_file_readers_importing_torch_breaks_it(tmp_path):
    root = _copy(tmp_path)
    readers = root / "continuityseq_stream" / "pipeline" / "init_files.py"
    readers.write_text(readers.read_text() + "\nimport torch  # wrong: the main process reads these files\n")
    out = _lint(root)
    assert out.returncode == 1
    text = " ".join(out.stdout.split())
    assert "continuityseq_stream.pipeline.init_files is not allowed to import torch" in text
    assert "continuityseq_stream.cli is not allowed to import torch" in text  # cli -> preflight -> init_files
    assert "only the producer loads the model BROKEN" in text and "3 kept, 1 broken" in text
