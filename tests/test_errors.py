"""errors.py holds every exception class; each one crosses the process boundary with its class,
template and argument names, so the CLI renders a producer's error with its flags."""

import inspect
import pickle

import pytest

from continuityseq_stream import errors
from continuityseq_stream.cli.app import flag_for
from continuityseq_stream.config import GenerationConfig
from continuityseq_stream.errors import (ConfigError, ContinuitySeqError, EndOfStream, ReaderRemoved, RingClosed,
                                         error_state, rebuild_error)

USER_ERRORS = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, ContinuitySeqError) and c.__module__ == errors.__name__]


def test_the_user_errors_are_all_here():
    names = {c.__name__ for c in USER_ERRORS}
    assert {"ConfigError", "CheckpointError", "SinkError", "SinkEnded", "UpdateError", "ControlError",
            "ChannelError", "RingTimeout"} <= names


@pytest.mark.parametrize("cls", USER_ERRORS, ids=lambda c: c.__name__)
def test_each_class_survives_the_trip(cls):
    error = cls.rebuilt("{guidance_scale}: got 99; use a value in [0, 50]", names=("guidance_scale",))
    state = pickle.loads(pickle.dumps(error_state(error)))  # what goes through the producer's pipe
    back = rebuild_error(*state)
    assert type(back) is cls
    assert back.names == ("guidance_scale",)
    assert str(back) == "guidance_scale: got 99; use a value in [0, 50]"
    assert back.render(flag_for) == "-g/--guidance-scale: got 99; use a value in [0, 50]"


def test_a_class_that_is_not_ours_comes_back_as_the_base_class():
    back = rebuild_error(*error_state(KeyError("k")))
    assert type(back) is ContinuitySeqError and str(back) == "'k'"
    assert type(rebuild_error("os", "x", ())) is ContinuitySeqError  # a module attribute, not a class


def test_end_of_stream_is_a_signal_not_a_user_error():
    for cls in (RingClosed, ReaderRemoved):
        assert issubclass(cls, EndOfStream) and not issubclass(cls, ContinuitySeqError)


def test_the_old_homes_still_export_them():
    from continuityseq_stream.control import ControlError
    from continuityseq_stream.prompts import ChannelError, UpdateError
    from continuityseq_stream.runtime.ringbuffer import RingClosed as R, RingTimeout

    assert (ControlError, ChannelError, UpdateError, R, RingTimeout) == (
        errors.ControlError, errors.ChannelError, errors.UpdateError, RingClosed, errors.RingTimeout)


@pytest.mark.slow
def test_a_config_error_in_the_producer_is_rendered_with_cli_flags(tmp_path):
    from continuityseq_stream.runtime.loop import RuntimeOptions, run

    config = GenerationConfig(prompt="x", times=3, num_frames=2, width=32, height=32, fps=8, guidance_scale=7.5)
    options = RuntimeOptions(source="continuityseq_stream.demo.synthetic_source:synthetic_stream",
                             source_kwargs={"fail_after": 1, "fail_as_config": True})
    with pytest.raises(ConfigError) as e:
        run(config, [f"file:{tmp_path / 'out.mp4'}"], options)
    assert e.value.names == ("guidance_scale",)
    assert e.value.render(flag_for) == "-g/--guidance-scale: got 7.5; synthetic failure before chunk 1"
