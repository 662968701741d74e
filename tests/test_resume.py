"""Resume (issue #13 item 6), in process: the state file, the live-settings snapshot, and a resumed
stream making exactly the chunks the uninterrupted stream made (live changes and a prompt schedule
included). The CLI with kill -9: tests/test_resume_cli.py."""

from __future__ import annotations

import json
import os
import random
import struct

import numpy as np
import pytest
import torch

from continuityseq_stream.config import GenerationConfig
from continuityseq_stream.prompts import LiveSettings, PromptSchedule
from continuityseq_stream.resume import (LIVE_FIELDS, STATE_FILE, ResumeError, ResumePoint, StateKeeper,
                                         check_resume_options, live_snapshot, load_resume_point, read_state, restore_live,
                                         save_state)
from continuityseq_stream.runtime.resume_files import keep_earlier_files

F, SIZE = 4, 32


def _live() -> LiveSettings:
    """Live settings with a schedule and every kind of live change, some still to come."""
    schedule = PromptSchedule.from_text("a red circle\na blue square | dark\na green star", interval=2, loop=True)
    live = LiveSettings(prompt="a red circle", negative_prompt="blurry", guidance_scale=7.5,
                        min_conditioning_frames=1, max_conditioning_frames=3, seed=5, schedule=schedule)
    live.apply({"command": "set_guidance", "guidance_scale": 4.25}, 1)
    live.apply({"command": "set_prompt", "prompt": "a yellow ring", "transition": 3}, 2)
    live.apply({"command": "set_negative_prompt", "negative_prompt": "noise"}, 3)
    live.apply({"command": "set_conditioning", "min": 2, "max": 2}, 3)
    live.apply({"command": "set_seed", "seed": 11}, 4)
    live.apply({"command": "set_prompt", "prompt": "a purple dot", "negative_prompt": "grain"}, 6)
    return live


def _config(tmp_path, **kw) -> GenerationConfig:
    values = dict(prompt="a red circle", model="demo-random", width=64, height=64, num_frames=F, times=0,
                  state_dir=str(tmp_path / "state"))
    values.update(kw)
    return GenerationConfig(**values)


def _point(next_chunk=3, k=2) -> ResumePoint:
    g = torch.Generator("cpu").manual_seed(9)
    torch.randn(5, generator=g)
    rng = random.Random(4)
    rng.random()
    return ResumePoint(next_chunk=next_chunk, next_frame=next_chunk * F,
                       conditioning=torch.randn(1, 4, k, 8, 8, generator=torch.Generator().manual_seed(1)),
                       generator_state=g.get_state(), selector_rng=rng.getstate(), live=live_snapshot(_live()))


# -- live settings ---------------------------------------------------------------------------------
def test_snapshot_covers_every_attribute_of_live_settings():
    """A field added to LiveSettings must be added to the snapshot too, or resumed runs would lose it."""
    assert set(vars(_live())) == set(LIVE_FIELDS) | {"_lock"}


def test_restored_live_settings_answer_every_chunk_as_the_original():
    live = _live()
    live.forget_before(2)
    snap = json.loads(json.dumps(live_snapshot(live)))  # as it comes back from the file
    back = restore_live(snap)
    for chunk in range(2, 14):
        assert back.settings_for_chunk(chunk, chunk * 0.5) == live.settings_for_chunk(chunk, chunk * 0.5), chunk
    assert back.conditioning_range == live.conditioning_range == (1, 3)
    assert back.upcoming(2) == live.upcoming(2)
    # a change sent after the restart lands the same way on both
    for s in (live, back):
        s.apply({"command": "set_guidance", "guidance_scale": 2.0}, 9)
    assert back.settings_for_chunk(9).guidance_scale == 2.0 == live.settings_for_chunk(9).guidance_scale


def test_damaged_live_snapshot_is_one_resume_error():
    snap = live_snapshot(_live())
    del snap["guidance"]
    with pytest.raises(ResumeError, match=r"^resume: the saved live settings are damaged \(KeyError"):
        restore_live(snap)


# -- the file --------------------------------------------------------------------------------------
def test_state_round_trip_and_header_readable_without_tensors(tmp_path):
    config = _config(tmp_path, resume=str(tmp_path / "state"))
    os.makedirs(config.state_dir)
    point = _point()
    path = save_state(config.state_dir, point, {"model": "demo-random", "width": 64, "height": 64, "num_frames": F,
                                                "upscale": False})
    assert os.listdir(config.state_dir) == [STATE_FILE]  # no temporary file left
    with open(path, "rb") as f:  # the safetensors layout: 8 bytes of length, then the JSON header
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n))["__metadata__"]
    assert json.loads(meta["state"])["next_frame"] == 3 * F
    doc = read_state(config.state_dir)
    assert (doc["next_chunk"], doc["next_frame"], doc["conditioning_frames"]) == (3, 12, 2)
    back = load_resume_point(config)
    assert torch.equal(back.conditioning, point.conditioning)
    assert torch.equal(back.generator_state, point.generator_state)
    assert back.selector_rng == point.selector_rng
    g = torch.Generator().manual_seed(0)
    g.set_state(back.generator_state)
    g0 = torch.Generator().manual_seed(0)
    g0.set_state(point.generator_state)
    assert torch.equal(torch.randn(7, generator=g), torch.randn(7, generator=g0))


def test_a_torn_write_leaves_the_previous_state(tmp_path):
    """A crash while writing leaves a temporary file, never a half-written state.safetensors."""
    folder = tmp_path / "state"
    folder.mkdir()
    ident = {"model": "demo-random", "width": 64, "height": 64, "num_frames": F, "upscale": False}
    save_state(str(folder), _point(3), ident)
    (folder / ".state-abc.tmp").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"__meta")  # what a kill leaves
    assert read_state(str(folder))["next_chunk"] == 3
    save_state(str(folder), _point(4), ident)
    assert read_state(str(folder))["next_chunk"] == 4


@pytest.mark.parametrize("content, problem", [
    (b"", "is not a saved state"),
    (b"\x05\x00\x00\x00\x00\x00\x00\x00{\"a\":", "is not a saved state"),
    (struct.pack("<Q", 2) + b"{}", "is not a saved state"),
])
def test_not_a_state_is_one_resume_error(tmp_path, content, problem):
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(ResumeError, match=problem) as e:
        read_state(str(tmp_path))
    assert "\n" not in str(e.value) and "{resume}" in e.value.template


def test_checks_refuse_another_model_size_or_frames_and_a_finished_times(tmp_path):
    saved = _config(tmp_path)
    os.makedirs(saved.state_dir)
    save_state(saved.state_dir, _point(3), {n: getattr(saved, n) for n in ("model", "width", "height", "num_frames",
                                                                            "upscale")})
    folder = saved.state_dir
    assert check_resume_options(_config(tmp_path, resume=folder, state_dir=None))["next_chunk"] == 3
    for change in ({"width": 96}, {"num_frames": 8}, {"model": "demo"}):
        with pytest.raises(ResumeError, match="is of a run with -m demo-random at 64x64, -T 4") as e:
            check_resume_options(_config(tmp_path, resume=folder, **change))
        assert e.value.argument == "resume"
    with pytest.raises(ResumeError, match="already has 3 chunks and times 3 asks for no more"):
        check_resume_options(_config(tmp_path, resume=folder, times=3))
    assert check_resume_options(_config(tmp_path, resume=folder, times=4))["next_chunk"] == 3
    with pytest.raises(ResumeError, match="no saved state in"):
        check_resume_options(_config(tmp_path, resume=str(tmp_path)))


def test_resumed_file_sinks_get_new_names(tmp_path):
    from continuityseq_stream.sinks.file import FileSink

    saved = _config(tmp_path)
    os.makedirs(saved.state_dir)
    save_state(saved.state_dir, _point(12), {n: getattr(saved, n) for n in ("model", "width", "height",
                                                                             "num_frames", "upscale")})
    (tmp_path / "out.mp4").write_bytes(b"earlier run")
    (tmp_path / "out.resume-c000012.mp4").write_bytes(b"an earlier resume from the same state")
    (tmp_path / "seg_000.mp4").write_bytes(b"earlier segment")
    plain, segmented = FileSink(tmp_path / "out.mp4"), FileSink(tmp_path / "seg_%03d.mp4", segment_seconds=60)
    keep_earlier_files([plain, segmented], _config(tmp_path, resume=saved.state_dir))
    assert plain.pattern == str(tmp_path / "out.resume-c000012-2.mp4")
    assert plain.name == f"file:{tmp_path / 'out.resume-c000012-2.mp4'}"
    assert segmented.pattern == str(tmp_path / "seg_%03d.resume-c000012.mp4")
    assert (tmp_path / "out.mp4").read_bytes() == b"earlier run"
    untouched = FileSink(tmp_path / "out.mp4")
    keep_earlier_files([untouched], saved)  # not resuming: names stay
    assert untouched.pattern == str(tmp_path / "out.mp4")


class _Ring:
    """What StateKeeper reads of a FrameRing: frames written, and how many the slowest reader lacks."""

    def __init__(self) -> None:
        self.written, self.lag = 0, 0

    def fill(self) -> int:
        return self.lag


def test_keeper_saves_only_what_every_sink_took_then_the_last_chunk_at_the_end(tmp_path):
    ring, ident = _Ring(), {"model": "demo-random", "width": 64, "height": 64, "num_frames": F, "upscale": False}
    keeper = StateKeeper(str(tmp_path), ident, ring, poll=0.02)
    try:
        ring.written, ring.lag = 8, 8  # chunks 0 and 1 in the ring, no sink took a frame yet
        keeper.offer(4, _point(1))
        keeper.offer(8, _point(2))
        _wait(lambda: False, 0.3)
        assert not (tmp_path / STATE_FILE).exists()
        ring.lag = 3  # chunk 0 delivered, chunk 1 not yet
        _wait(lambda: (tmp_path / STATE_FILE).exists(), 10)
        assert read_state(str(tmp_path))["next_chunk"] == 1
        ring.written, ring.lag = 12, 6
        keeper.offer(12, _point(3))
        ring.lag = 4  # chunk 1 delivered
        _wait(lambda: read_state(str(tmp_path))["next_chunk"] == 2, 10)
    finally:
        keeper.close()
    assert read_state(str(tmp_path))["next_chunk"] == 3  # the end: the last written chunk


def _wait(cond, seconds: float) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not cond():
        time.sleep(0.02)


# -- the pipeline ----------------------------------------------------------------------------------
def _stream(pipe, live, **kw):
    from continuityseq_stream.pipeline.conditioning import UniformConditioning

    generator = kw.pop("generator", None) or torch.Generator().manual_seed(5)
    selector = UniformConditioning(*live.conditioning_range, kw.pop("rng", None) or random.Random(5))
    return pipe.stream(live, num_frames=F, height=SIZE, width=SIZE, num_inference_steps=2, selector=selector,
                       generator=generator, times=8, resume_points=True, **kw)


@pytest.mark.slow
def test_resumed_stream_makes_exactly_the_uninterrupted_chunks(pipe):
    """The strongest check: from the point saved after chunk 2, a new stream (restored latents,
    generator, selector rng and live settings, through the file) makes chunks 3..7 bit for bit as
    the uninterrupted stream did, with a prompt schedule, live changes (one in a transition) and a
    re-seed on the way; frame indices go on."""
    image = np.full((SIZE, SIZE, 3), 90, np.uint8)
    full = list(_stream(pipe, _live(), image=image))
    assert [c.index for c in full] == list(range(8))
    point = full[2].resume_point
    assert (point.next_chunk, point.next_frame) == (3, 3 * F)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        save_state(folder, point, {"model": "m", "width": SIZE, "height": SIZE, "num_frames": F, "upscale": False})
        config = GenerationConfig(prompt="x", model="m", width=SIZE, height=SIZE, num_frames=F, times=8, resume=folder)
        back = load_resume_point(config)
    generator = torch.Generator().manual_seed(0)
    generator.set_state(back.generator_state)
    rng = random.Random()
    rng.setstate(back.selector_rng)
    resumed = list(_stream(pipe, restore_live(back.live), init_latents=back.conditioning, generator=generator,
                           rng=rng, start_chunk=back.next_chunk, start_frame=back.next_frame))
    assert [(c.index, c.first_frame) for c in resumed] == [(c.index, c.first_frame) for c in full[3:]]
    assert [c.prompt for c in resumed] == [c.prompt for c in full[3:]]
    assert len({c.prompt for c in full}) >= 4  # the schedule and the live prompts really changed it
    for a, b in zip(full[3:], resumed):
        assert np.array_equal(a.frames, b.frames), a.index
        assert a.conditioning_frames == b.conditioning_frames
    # and not by chance: a stream without the restored generator state differs
    other = list(_stream(pipe, restore_live(back.live), init_latents=back.conditioning, rng=rng,
                         start_chunk=3, start_frame=12, generator=torch.Generator().manual_seed(123)))
    assert not np.array_equal(other[0].frames, full[3].frames)
