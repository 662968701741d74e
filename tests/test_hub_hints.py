"""Offline, a hub id that is not cached fails with one line that names a command the pinned
huggingface-hub really ships: `hf download` (its `huggingface-cli` was removed)."""

from __future__ import annotations

import os
import sys

import pytest

from continuityseq_stream.errors import CheckpointError

MISSING = "nobody-here/not-a-model"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache


def test_the_hf_command_exists_beside_this_python():
    assert os.path.isfile(os.path.join(os.path.dirname(sys.executable), "hf"))


def test_pipeline_hint_names_hf_download():
    from continuityseq_stream.pipeline.resolve import resolve_pretrained_path

    with pytest.raises(CheckpointError) as e:
        resolve_pretrained_path(MISSING)
    assert f"hf download {MISSING}" in str(e.value) and "huggingface-cli" not in str(e.value)
    assert "\n" not in str(e.value)


def test_unet_loader_hint_names_hf_download():
    from continuityseq_stream.models.loading import load_unet
    from continuityseq_stream.models import ContinuitySeqUNet

    with pytest.raises(CheckpointError) as e:
        load_unet(ContinuitySeqUNet, MISSING)
    assert f"hf download {MISSING}" in str(e.value) and "huggingface-cli" not in str(e.value)
