"""Continuity metrics on hand-made sequences whose answers are known."""

import numpy as np
import pytest

from continuityseq_stream.demo import metrics, synthetic


def _clip(caption, n=48, seed=0):
    return synthetic.render_clip(synthetic.spec_from_caption(caption, np.random.default_rng(seed)), n)


def _jump_at_boundaries(frames, chunk, shift):
    """Shift every chunk `shift` pixels further right than the previous: a jump at each join."""
    out = frames.copy()
    for start in range(chunk, len(frames), chunk):
        out[start:] = np.roll(out[start:], shift, axis=2)
    return out


def test_boundary_steps():
    np.testing.assert_array_equal(metrics.boundary_steps(9, 4), [False, False, False, True, False, False, False, True])
    with pytest.raises(ValueError, match="chunk_length"):
        metrics.boundary_steps(9, 0)


def test_smooth_motion_has_seam_ratio_one():
    clip = _clip("a red square moving right on a gray background")
    s = metrics.seam_stats(clip.frames, 4)
    assert s["tracked_fraction"] == 1.0
    assert s["boundary_velocity_error"] < 0.3 and s["inside_velocity_error"] < 0.3
    assert 0.7 < s["seam_ratio"] < 1.4
    f = metrics.frame_difference_stats(clip.frames, 4)
    assert 0.8 < f["frame_diff_ratio"] < 1.25


def test_still_object_gives_exactly_one():
    frame = synthetic.render_frame(synthetic.sample_spec(np.random.default_rng(0), motion="left"), 10.0, 12.0)
    frames = np.repeat(frame[None], 20, axis=0)
    s = metrics.seam_stats(frames, 4)
    assert s["seam_ratio"] == pytest.approx(1.0)
    assert s["boundary_velocity_error"] == pytest.approx(0.0, abs=1e-9)


def test_jump_at_boundaries_gives_a_large_ratio():
    clip = _clip("a blue circle moving down on a black background")
    jumped = _jump_at_boundaries(clip.frames, 4, 5)
    s = metrics.seam_stats(jumped, 4)
    # a 5 px jump: boundary errors ~5 px, inside ~0 -> ratio about (5 + .25) / .25
    assert s["boundary_velocity_error"] == pytest.approx(5.0, abs=0.6)
    assert s["seam_ratio"] > 10
    assert metrics.frame_difference_stats(jumped, 4)["frame_diff_ratio"] > 2


def test_velocity_wraps_around_edges():
    clip = _clip("a green circle moving left on a purple background", n=80)
    v = metrics.velocities(metrics.track(clip.frames))
    np.testing.assert_allclose(v[:, 0], clip.spec.vx, atol=0.3)  # no +-32 px jumps at the wrap


def test_adherence_of_ground_truth_and_of_a_wrong_prompt():
    clip = _clip("a yellow triangle moving up on a brown background")
    right = metrics.adherence(clip.frames, 4, "a yellow triangle moving up on a brown background")
    assert right["chunks"] == 12
    assert right["colour"] == right["direction"] == right["shape"] == right["all"] == 1.0
    wrong = metrics.adherence(clip.frames, 4, "a red square moving down on a brown background")
    assert wrong["colour"] == wrong["direction"] == wrong["shape"] == 0.0
    with pytest.raises(ValueError, match="grammar"):
        metrics.adherence(clip.frames, 4, "a cat")


@pytest.mark.parametrize("shape", synthetic.SHAPES)
def test_shape_and_colour_classification(shape):
    for colour in synthetic.COLOURS:
        clip = _clip(f"a {colour} {shape} moving left on a gray background", n=4)
        tr = metrics.track(clip.frames)
        assert metrics.classify_colour(tr.colour[0]) == colour
        assert metrics.classify_shape(tr.fill[0]) == shape


def test_drift_of_a_shrinking_fading_object():
    spec = synthetic.spec_from_caption("a white circle moving right on a black background", np.random.default_rng(3))
    frames = []
    for i in range(40):  # radius shrinks, colour fades towards gray over 10 chunks
        s = synthetic.ClipSpec(**{**spec.to_dict(), "radius": spec.radius * (1 - 0.01 * i)})
        f = synthetic.render_frame(s, (spec.x + i) % 32, spec.y).astype(np.float64)
        mask = f.sum(-1) > 200
        f[mask] = f[mask] - 2 * i
        frames.append(f.astype(np.uint8))
    d = metrics.drift(np.stack(frames), 4, window=2)
    assert d["area_change"] < -0.4
    assert d["colour_shift"] > 100
    steady = metrics.drift(_clip("a white circle moving right on a black background").frames, 4)
    assert abs(steady["area_change"]) < 0.05 and steady["colour_shift"] < 1


def test_frame_difference_needs_no_object():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8)
    f = metrics.frame_difference_stats(frames, 3)
    assert np.isfinite(f["frame_diff_ratio"])
    with pytest.raises(ValueError, match="frames"):
        metrics.frame_difference_stats(frames[..., 0], 3)


def test_continuity_report_keys():
    clip = _clip("a red circle moving left on a gray background", n=16)
    r = metrics.continuity_report(clip.frames, 4, clip.caption)
    for key in ("seam_ratio", "frame_diff_ratio", "area_change", "colour_shift", "adherence_colour_and_direction"):
        assert key in r
    assert "adherence_colour" not in metrics.continuity_report(clip.frames, 4, "free text")
