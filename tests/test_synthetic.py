"""Synthetic motion clips: determinism, captions, and positions that match the rendered pixels."""

import numpy as np
import pytest

from continuityseq_stream.demo import synthetic
from continuityseq_stream.demo.metrics import track, wrapped_delta


def test_same_seed_same_clips_other_seed_differs():
    a = synthetic.make_clips(4, 6, seed=3)
    b = synthetic.make_clips(4, 6, seed=3)
    c = synthetic.make_clips(4, 6, seed=4)
    for x, y in zip(a, b):
        assert x.caption == y.caption
        np.testing.assert_array_equal(x.frames, y.frames)
        np.testing.assert_array_equal(x.positions, y.positions)
    assert any(x.caption != z.caption or not np.array_equal(x.frames, z.frames) for x, z in zip(a, c))


def test_clip_shapes_and_dtype():
    clip = synthetic.make_clips(1, 5, seed=0, size=32)[0]
    assert clip.frames.shape == (5, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.positions.shape == (5, 2)


@pytest.mark.parametrize("caption", [
    "a red circle moving left on a gray background",
    "a white square moving up on a black background",
    "a blue triangle moving down on a brown background",
    "a yellow circle bouncing on a purple background",
])
def test_caption_round_trip_and_spec(caption):
    spec = synthetic.spec_from_caption(caption, np.random.default_rng(0))
    assert spec.caption == caption
    parsed = synthetic.parse_caption(caption)
    assert (parsed["colour"], parsed["shape"], parsed["background"]) == (spec.colour, spec.shape, spec.background)
    assert parsed["motion"] == spec.motion


def test_parse_caption_rejects_other_text():
    assert synthetic.parse_caption("a cat on a mat") is None
    assert synthetic.parse_caption("a pink circle moving left on a gray background") is None


@pytest.mark.parametrize("shape,centroid_dy", [("circle", 0.0), ("square", 0.0), ("triangle", 0.4)])
@pytest.mark.parametrize("motion", ["left", "up", "bouncing"])
def test_positions_match_rendered_pixels(shape, centroid_dy, motion):
    """The colour centroid of the object is the recorded position (within a pixel) (a triangle's centroid sits
    r/3 = 0.4 radius below its box centre), also when it wraps around an edge."""
    rng = np.random.default_rng(7)
    spec = synthetic.sample_spec(rng, shape=shape, colour="red", background="gray", motion=motion)
    clip = synthetic.render_clip(spec, 48)  # long enough to wrap / bounce
    expected = clip.positions + np.array([0.0, centroid_dy * spec.radius])
    tr = track(clip.frames)
    err = np.abs(wrapped_delta(tr.centre, expected, tr.size))
    assert err.max() < 0.75, err.max()  # threshold segmentation quantises thin edges


def test_directional_motion_is_constant_velocity_on_a_torus():
    spec = synthetic.sample_spec(np.random.default_rng(1), motion="right")
    clip = synthetic.render_clip(spec, 40)
    step = wrapped_delta(clip.positions[:-1], clip.positions[1:], (spec.size, spec.size))
    np.testing.assert_allclose(step[:, 0], spec.vx, atol=1e-4)
    np.testing.assert_allclose(step[:, 1], 0.0, atol=1e-4)
    assert spec.vx > 0 and (clip.positions >= 0).all() and (clip.positions < spec.size).all()


def test_bouncing_stays_inside():
    spec = synthetic.sample_spec(np.random.default_rng(2), motion="bouncing")
    clip = synthetic.render_clip(spec, 200)
    r = synthetic.half_extent(spec.shape, spec.radius)
    assert (clip.positions >= r - 1e-4).all() and (clip.positions <= spec.size - r + 1e-4).all()


def test_vocabulary_covers_every_caption():
    clips = synthetic.make_clips(30, 1, seed=5)
    for c in clips:
        assert set(c.caption.split()) <= set(synthetic.VOCABULARY)


def test_turn_clip_changes_direction_at_turn_at_and_is_captioned_with_the_new_one():
    rng = np.random.default_rng(3)
    spec = synthetic.sample_spec(rng, motion="left")
    clip = synthetic.render_turn_clip(spec, "down", turn_at=4, num_frames=8)
    assert clip.caption.endswith("moving down on a " + spec.background + " background")
    assert clip.caption.startswith(f"a {spec.colour} {spec.shape}")
    step = np.diff(clip.positions.astype(np.float64), axis=0)
    step = np.mod(step + 16, 32) - 16  # torus
    speed = np.hypot(spec.vx, spec.vy)
    np.testing.assert_allclose(step[:3], [[-speed, 0]] * 3, atol=1e-4)   # frames 0..3: left
    np.testing.assert_allclose(step[3:], [[0, speed]] * 4, atol=1e-4)    # from frame 4: down, from frame 3's place
    clips = synthetic.make_turn_clips(6, 8, 4, seed=1)
    assert all(c.frames.shape == (8, 32, 32, 3) for c in clips)
    assert [c.caption for c in clips] == [c.caption for c in synthetic.make_turn_clips(6, 8, 4, seed=1)]
    first_dirs = [np.sign(np.mod(np.diff(c.positions[:2], axis=0)[0] + 16, 32) - 16) for c in clips]
    last_dirs = [synthetic.direction_vector(c.spec.motion) for c in clips]
    assert all(not np.allclose(a, b) for a, b in zip(first_dirs, last_dirs))  # every clip really turns
