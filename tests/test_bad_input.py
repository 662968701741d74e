"""The checks behind issue #11 point 6, in process and fast: each validator refuses the bad value
with the wording of the place it came from (the Python argument name in `str(e)`, the CLI flag in
`e.render(flag_for)`), and accepts the values at its bounds. The CLI end to end is in
test_bad_input_cli.py."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from continuityseq_stream.cli.app import flag_for
from continuityseq_stream.config import MAX_SEED, MAX_SIDE, GenerationConfig
from continuityseq_stream.errors import ConfigError, SinkError
from continuityseq_stream.runtime.ringbuffer import check_ring_memory, ring_bytes
from continuityseq_stream.runtime.loop import RuntimeOptions, build_sinks, run
from continuityseq_stream.pipeline.chunk_source import check_upscaler_size
from continuityseq_stream.sinks import sink_from_uri
from continuityseq_stream.sinks.file import FileSink
from continuityseq_stream.pipeline.first_frame import load_init_image

from test_bad_input_cli import bomb_png

NAN, INF = float("nan"), float("inf")


# -- one wording, two audiences --------------------------------------------------------------------
def test_python_callers_read_argument_names_and_the_cli_reads_flags():
    with pytest.raises(ConfigError) as e:
        GenerationConfig(prompt="x", guidance_scale=NAN)
    assert str(e.value) == ("guidance_scale: got nan; use a finite guidance scale >= 0 "
                            "(values <= 1 turn classifier-free guidance off)")
    assert e.value.argument == "guidance_scale"
    assert e.value.render(flag_for).startswith("-g/--guidance-scale: got nan; ")
    with pytest.raises(ConfigError) as e:
        GenerationConfig(prompt="x", min_conditioning_frames=4, max_conditioning_frames=2)
    assert str(e.value) == "max_conditioning_frames: got 2; use a value >= min_conditioning_frames (4)"
    assert e.value.render(flag_for) == ("-CX/--max_conditioning_n_sample_frames: got 2; "
                                        "use a value >= -CN/--min_conditioning_n_sample_frames (4)")


def test_flag_for_reads_the_run_commands_own_options():
    assert [flag_for(n) for n in ("fps", "seed", "width", "init_image", "init_video", "sinks", "ring_frames",
                                  "upscale", "duration")] == [
        "-f/--fps", "-r/--seed", "-WI/--width", "-i/--init-image", "--init-video", "--sink", "--ring-frames",
        "-u/--upscale", "--duration"]
    assert flag_for("stop_grace") == "stop_grace"  # no flag sets it: the name stays


def test_an_error_survives_pickling_between_processes_with_its_message():
    e = ConfigError("{fps}: got inf", names=("fps",))
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is ConfigError and str(back) == "fps: got inf"


# -- GenerationConfig: non-finite and absurd values ---------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("guidance_scale", NAN), ("guidance_scale", INF), ("guidance_scale", -1.0), ("image_guidance_scale", NAN),
    ("fps", INF), ("fps", NAN), ("fps", 0.0001), ("fps", 0.5), ("fps", 241.0), ("fps", True),
    ("vae_scale", NAN), ("vae_scale", INF), ("vae_scale", 0.0),
    ("seed", 2**80), ("seed", MAX_SEED + 1), ("seed", -1), ("seed", True), ("seed", 1.5),
    ("width", 100_000), ("width", MAX_SIDE + 8), ("width", 60), ("height", True), ("image_width", 8192),
    ("num_frames", 257), ("num_frames", 0), ("num_steps", 1001), ("times", -1), ("times", False),
    ("upscale", 1), ("compile", "yes"), ("negative_prompt", 3),
])
def test_config_refuses_with_the_field_name(field, value):
    with pytest.raises(ConfigError) as e:
        GenerationConfig(prompt="x", **{field: value})
    assert str(e.value).startswith(f"{field}: got {value!r}; "), str(e.value)
    assert e.value.render(flag_for).startswith(f"{flag_for(field)}: got ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("values", [
    dict(fps=1), dict(fps=240.0), dict(fps=29.97), dict(seed=0), dict(seed=MAX_SEED), dict(width=MAX_SIDE),
    dict(height=8), dict(num_frames=256), dict(num_steps=1000), dict(guidance_scale=0.0), dict(vae_scale=0.18215),
])
def test_config_accepts_its_bounds(values):
    config = GenerationConfig(prompt="x", **values)
    for k, v in values.items():
        assert getattr(config, k) == v


def test_the_largest_seed_is_one_torch_takes():
    torch.Generator("cpu").manual_seed(MAX_SEED)  # the bound is not stricter than needed, and not looser


def test_frame_size_doubles_with_the_upscaler():
    assert GenerationConfig(prompt="x", width=64, height=32).frame_size == (32, 64)
    assert GenerationConfig(prompt="x", width=64, height=32, upscale=True).frame_size == (64, 128)


def test_runtime_options_refuse_non_finite_seconds():
    for name, value in (("duration", INF), ("duration", NAN), ("stop_grace", INF), ("status_interval", NAN),
                        ("drain_timeout", INF)):
        with pytest.raises(ConfigError) as e:
            RuntimeOptions(**{name: value})
        assert str(e.value).startswith(f"{name}: got {value!r}; ")
    assert RuntimeOptions(duration=0.5).duration == 0.5


# -- sinks: options checked when the URI is parsed ----------------------------------------------------
@pytest.mark.parametrize("uri, problem", [
    ("file:{d}/out_%.mp4?segment=5", "segment= needs one printf counter"),       # ValueError from '%'
    ("file:{d}/out.mp4?segment=5", "segment= needs one printf counter"),         # no counter: TypeError
    ("file:{d}/out_%d_%d.mp4?segment=5", "segment= needs one printf counter"),   # two counters
    ("file:{d}/out_%.0s.mp4?segment=5", "a counter that changes the name"),      # formats, same name
    ("file:{d}/out_%03d.mp4?segment=0.5", "option segment='0.5' must be a number in [1, 1e+09]"),
    ("file:{d}/out_%03d.mp4?segment=nan", "option segment='nan'"),
    ("file:{d}/out_%03d.mp4?segment=inf", "option segment='inf'"),
    ("file:{d}/x.mp4?preset=bogus", "option preset='bogus' is not one of ultrafast, superfast"),
    ("file:{d}/x.mp4?crf=nan", "option crf='nan' must be an integer in [0, 51]"),
    ("file:{d}/x.mp4?keyint=0", "option keyint='0'"),
    ("rtmp://127.0.0.1/live/k?preroll=nan", "option preroll='nan'"),
    ("rtmp://127.0.0.1/live/k?preroll=inf", "option preroll='inf'"),
    ("zmq+push://127.0.0.1:5556?timeout=nan", "option timeout='nan'"),
])
def test_sink_options_are_checked_at_parse_time(tmp_path, uri, problem):
    uri = uri.format(d=tmp_path)
    with pytest.raises(ConfigError) as e:
        sink_from_uri(uri)
    assert str(e.value).startswith(f"sinks {uri!r}: "), str(e.value)
    assert problem in str(e.value)
    assert e.value.render(flag_for).startswith(f"--sink {uri!r}: ")


def test_good_segment_patterns_and_presets_pass(tmp_path):
    sink = sink_from_uri(f"file:{tmp_path}/out_%03d.mp4?segment=1&preset=medium")
    assert sink.segment_seconds == 1.0 and sink.preset == "medium"
    assert sink_from_uri(f"file:{tmp_path}/100%%_%d.mkv?segment=60").pattern.endswith("100%%_%d.mkv")


def test_filesink_arguments_from_python_are_checked_too(tmp_path):
    with pytest.raises(ConfigError, match=r"preset='bogus': use one of ultrafast"):
        FileSink(tmp_path / "a.mp4", preset="bogus")
    with pytest.raises(ConfigError, match=r"crf=99"):
        FileSink(tmp_path / "a.mp4", crf=99)
    with pytest.raises(ConfigError, match="segment= needs one printf counter"):
        FileSink(tmp_path / "a_%.mp4", segment_seconds=5)


# -- the one sink failing at setup -----------------------------------------------------------------------
def _config(**kw):
    return GenerationConfig(prompt="x", width=32, height=32, num_frames=2, times=1, **kw)


def test_the_only_sink_failing_at_setup_raises_one_sink_error(tmp_path):
    uri = f"file:{tmp_path}/missing/out.mp4"
    with pytest.raises(SinkError) as e:
        run(_config(), [uri], RuntimeOptions(source="continuityseq_stream.demo.synthetic_source:synthetic_stream"))
    assert str(e.value).startswith(f"sinks {uri!r}: file sink: directory ")
    assert e.value.render(flag_for).startswith(f"--sink {uri!r}: ")
    two = [uri, f"file:{tmp_path}/other/out.mp4"]
    with pytest.raises(SinkError, match=r"^sinks: no usable sink, all 2 failed at setup \('file:"):
        build_sinks(two)


def test_a_failing_sink_beside_a_good_one_is_left_out_with_one_line(tmp_path, capsys):
    sinks = build_sinks([f"file:{tmp_path}/missing/out.mp4", f"file:{tmp_path}/ok.mp4"])
    assert [s.name for s in sinks] == [f"file:{tmp_path}/ok.mp4"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "failed (setup)" in err[0] and "left out" in err[0]


# -- the frame ring's shared memory, before anything starts -------------------------------------------
def test_ring_memory_is_refused_before_the_producer_or_any_segment_exists(tmp_path):
    before = set(os.listdir("/dev/shm"))
    with pytest.raises(ConfigError) as e:
        run(_config(), [f"file:{tmp_path}/o.mp4"],
            RuntimeOptions(ring_frames=100_000_000, source="continuityseq_stream.demo.synthetic_source:synthetic_stream"))
    assert str(e.value).startswith("ring_frames: 100000000 frames of 32x32 need ")
    assert e.value.render(flag_for).startswith("--ring-frames: 100000000 frames")
    assert set(os.listdir("/dev/shm")) - before == set()  # nothing was created
    assert not (tmp_path / "o.mp4").exists()


def test_ring_memory_is_checked_for_the_upscaled_frames(tmp_path):
    """With -u the sinks get frames twice as wide and high: the ring is checked at that size."""
    st = os.statvfs("/dev/shm")
    slots = st.f_bavail * st.f_frsize // (2 * 512 * 512 * 3)  # about half of /dev/shm at 512x512
    check_ring_memory(slots, 512, 512)  # fits at the video size...
    config = GenerationConfig(prompt="x", width=512, height=512, upscale=True, upscaler="demo")
    with pytest.raises(ConfigError, match=f"^ring_frames: {slots} frames of 1024x1024 need "):
        run(config, [f"file:{tmp_path}/o.mp4"],
            RuntimeOptions(ring_frames=slots, source="continuityseq_stream.demo.synthetic_source:synthetic_stream"))
    assert ring_bytes(2, 1024, 1024) == 4 * ring_bytes(2, 512, 512) - 3 * 2 * (4 * 8 + 8 + 256)


# -- -i: a decompression bomb ------------------------------------------------------------------------
def test_a_decompression_bomb_is_one_config_error_naming_init_image(tmp_path):
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 1000  # the header claims 400 megapixels
    with pytest.raises(ConfigError) as e:
        load_init_image(str(path), 32, 32)
    assert str(e.value).startswith(f"init_image: {str(path)!r} has more pixels than Pillow decodes safely")
    assert e.value.render(flag_for).startswith("-i/--init-image: ")


# -- -u: the smallest latents the upscaler takes ------------------------------------------------------
@pytest.mark.parametrize("width, height, ok", [
    (32, 32, False), (64, 64, True), (96, 64, True), (80, 64, False), (64, 56, False), (576, 320, True)])
def test_upscaler_size_rule(width, height, ok):
    config = GenerationConfig(prompt="x", width=width, height=height, upscale=True, upscaler="demo")
    if ok:
        check_upscaler_size(config)
    else:
        with pytest.raises(ConfigError) as e:
            check_upscaler_size(config)
        assert str(e.value).startswith("upscale: the latent upscaler needs video sides that are multiples of 32 "
                                       "and at least 64")
        assert f"got width {width} x height {height}" in str(e.value)
    check_upscaler_size(config.replace(upscale=False))  # without -u any size goes


def test_upscaler_rule_follows_the_unet_config_of_a_custom_upscaler(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"down_block_types": ["KDownBlock2D"] * 3}))
    config = GenerationConfig(prompt="x", width=48, height=32, upscale=True, upscaler=str(tmp_path))
    check_upscaler_size(config)  # 3 blocks: multiples of 16, at least 32
    with pytest.raises(ConfigError, match="multiples of 16 and at least 32"):
        check_upscaler_size(config.replace(width=40))


@pytest.mark.slow
def test_upscaler_rule_matches_the_demo_upscaler(tmp_path, monkeypatch):
    """The rule is what the real (demo) upscaler does: it runs on the latent sizes the check lets
    through and fails on those it refuses (checked on the model, so the rule cannot drift)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from continuityseq_stream.pipeline.first_frame import load_upscaler

    up = load_upscaler("demo")
    up.set_progress_bar_config(disable=True)
    for latent in (4, 6, 8, 10, 12):
        config = GenerationConfig(prompt="x", width=8 * latent, height=8 * latent, upscale=True, upscaler="demo")
        try:
            check_upscaler_size(config)
            allowed = True
        except ConfigError:
            allowed = False
        try:
            out = up(prompt=["x"], image=torch.zeros(1, 4, latent, latent), num_inference_steps=1,
                     guidance_scale=0.0, output_type="latent").images
            works = tuple(out.shape) == (1, 4, 2 * latent, 2 * latent)
        except RuntimeError:
            works = False
        assert allowed == works, (latent, allowed, works)
