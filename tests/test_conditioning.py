"""Conditioning selectors: the original's uniform [CN, CX] policy and a fixed k, alone."""

import random

import pytest

from continuityseq_stream.pipeline.conditioning import ConditioningSelector, FixedConditioning, UniformConditioning, clamp_k
from continuityseq_stream.errors import ConfigError


def test_uniform_matches_python_randint_sequence():
    sel = UniformConditioning(2, 6, random.Random(123))
    ref = random.Random(123)
    assert [sel.next_k(i, 8) for i in range(50)] == [ref.randint(2, 6) for _ in range(50)]


def test_uniform_is_inclusive_and_in_range():
    sel = UniformConditioning(1, 3, random.Random(0))
    ks = {sel.next_k(i, 8) for i in range(300)}
    assert ks == {1, 2, 3}
    assert isinstance(sel, ConditioningSelector) and sel.max_k == 3


def test_same_seed_same_draws_and_no_global_rng():
    state = random.getstate()
    a = [UniformConditioning(1, 8, random.Random(7)).next_k(0, 8) for _ in range(3)]
    assert random.getstate() == state
    assert len(set(a)) == 1


def test_fixed():
    sel = FixedConditioning(3)
    assert [sel.next_k(i, 8) for i in range(4)] == [3, 3, 3, 3] and sel.max_k == 3


def test_k_larger_than_chunk_means_all_frames():
    assert clamp_k(12, 8) == 8 and clamp_k(3, 8) == 3 and clamp_k(1, 1) == 1


@pytest.mark.parametrize("cn,cx", [(0, 4), (3, 2), (-1, 1)])
def test_bad_bounds(cn, cx):
    with pytest.raises(ConfigError, match="conditioning"):
        UniformConditioning(cn, cx)


def test_bad_fixed():
    with pytest.raises(ConfigError):
        FixedConditioning(0)


def test_bad_bounds_are_checked_as_the_config_checks_them():
    """One check for CN/CX: a selector's error names the arguments, so the CLI spells its flags."""
    from continuityseq_stream.cli.app import flag_for
    from continuityseq_stream.config import GenerationConfig

    with pytest.raises(ConfigError) as selector_error:
        UniformConditioning(3, 2)
    with pytest.raises(ConfigError) as config_error:
        GenerationConfig(prompt="x", min_conditioning_frames=3, max_conditioning_frames=2)
    assert str(selector_error.value) == str(config_error.value)
    assert selector_error.value.render(flag_for) == (
        "-CX/--max_conditioning_n_sample_frames: got 2; use a value >= -CN/--min_conditioning_n_sample_frames (3)")
