"""Prompt files, schedules, embedding blends and live settings (continuityseq_stream.prompts)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from continuityseq_stream.config import GenerationConfig
from continuityseq_stream.errors import ConfigError
from continuityseq_stream.prompts import (
    LiveSettings,
    PromptBlend,
    PromptBlender,
    PromptEntry,
    PromptSchedule,
    UpdateChannel,
    UpdateError,
    format_timestamp,
    parse_prompt_text,
    parse_timestamp,
    read_prompt_file,
    validate_update,
)


# ------------------------------------------------------------------------------------------------
# a tiny, deterministic text encoder: a CLIP text model with random weights, built offline
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_encode():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = CLIPTextModel(config).eval()

    def encode(prompt: str) -> torch.Tensor:
        # byte-level "tokenizer": bos, bytes mapped into the vocabulary, eos, padded to 16
        ids = [1] + [3 + b % 61 for b in prompt.encode("utf-8")][:14] + [2]
        ids += [0] * (16 - len(ids))
        with torch.no_grad():
            return model(torch.tensor([ids]))[0]

    return encode


# ------------------------------------------------------------------------------------------------
# prompt files
# ------------------------------------------------------------------------------------------------
def test_parse_untimed_file_with_comments_negatives_and_escapes():
    text = (
        "# a comment\n"
        "\n"
        "a red fox in snow\n"
        "   a city at night | blurry, low quality  \n"
        "a pipe \\| in the prompt | \n"
        "\\# hashtag prompt\n"
        "12\\:30 at night\n"
        "back\\\\slash\n"
    )
    parsed = parse_prompt_text(text, "p.txt")
    assert not parsed.timed and parsed.end_time is None
    assert [(e.prompt, e.negative, e.line) for e in parsed.entries] == [
        ("a red fox in snow", None, 3),
        ("a city at night", "blurry, low quality", 4),
        ("a pipe | in the prompt", "", 5),
        ("# hashtag prompt", None, 6),
        ("12:30 at night", None, 7),
        ("back\\slash", None, 8),
    ]


def test_parse_timed_file_and_loop_end_marker():
    text = "00:00 dawn\n0:30 noon | rain\n1:02:03.5 dusk\n1:05:00\n"
    parsed = parse_prompt_text(text)
    assert parsed.timed
    assert [(e.prompt, e.negative, e.time) for e in parsed.entries] == [
        ("dawn", None, 0.0), ("noon", "rain", 30.0), ("dusk", None, 3723.5)]
    assert parsed.end_time == 3900.0


def test_timestamps_parse_and_format():
    assert parse_timestamp("00:30") == 30.0
    assert parse_timestamp("90:00") == 5400.0
    assert parse_timestamp("1:02:03") == 3723.0
    assert format_timestamp(3723.0) == "1:02:03"
    assert format_timestamp(30.0) == "00:30"
    assert format_timestamp(2.5) == "00:02.5"
    for bad in ("1:75", "1:60:00", "1::2", "a:10"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_a_prompt_starting_with_90s_is_not_a_time():
    parsed = parse_prompt_text("90s cartoon style\n12:30pm lunch\n")
    assert [e.prompt for e in parsed.entries] == ["90s cartoon style", "12:30pm lunch"]
    assert not parsed.timed


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("a cat\n00:30 a dog\n", "p.txt:2: this line has a time stamp but line 1 has none"),
        ("00:00 a cat\n\na dog\n", "p.txt:3: this line has no time stamp but line 1 has one"),
        ("a | b | c\n", "p.txt:1: more than one '|'"),
        ("  | only negative\n", "p.txt:1: empty prompt"),
        ("a \\q b\n", "p.txt:1: unknown escape"),
        ("a cat \\\n", "p.txt:1: unknown escape"),
        ("1:75 a cat\n", "p.txt:1: time stamp '1:75' has 75 seconds"),
        ("00:30 a\n00:30 b\n", "p.txt:2: time stamp 00:30 is not after the previous one (00:30)"),
        ("00:30 a\n00:10 b\n", "p.txt:2: time stamp 00:10 is not after"),
        ("00:00 a\n01:00\n02:00 b\n", "p.txt:3: a line follows the bare time stamp on line 2"),
        ("00:00\n", "p.txt:1: a time stamp without a prompt"),
        ("# nothing\n\n", "p.txt: no prompts"),
    ],
)
def test_bad_prompt_files_name_file_line_and_fix(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_prompt_text(text, "p.txt")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_read_prompt_file_errors(tmp_path):
    from continuityseq_stream.cli.app import flag_for

    with pytest.raises(ConfigError, match="^prompts_file: cannot read") as e:
        read_prompt_file(tmp_path / "missing.txt")
    assert e.value.render(flag_for).startswith("--prompts-file: cannot read")  # the CLI's spelling
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"a cat\ncaf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.txt:2: not UTF-8"):
        read_prompt_file(bad)
    good = tmp_path / "p.txt"
    good.write_text("a\nb\n", encoding="utf-8")
    assert PromptSchedule.from_file(good, interval=3).entries[1].prompt == "b"


def test_schedule_option_errors():
    untimed = parse_prompt_text("a\nb\n")
    timed = parse_prompt_text("00:00 a\n00:10 b\n")
    with pytest.raises(ConfigError, match="^prompts_interval: got 0"):
        PromptSchedule.from_parsed(untimed, interval=0)
    with pytest.raises(ConfigError, match="^prompts_interval: got True"):
        PromptSchedule.from_parsed(untimed, interval=True)
    with pytest.raises(ConfigError, match="has time stamps"):
        PromptSchedule.from_parsed(timed, interval=2)
    with pytest.raises(ConfigError, match="needs a last line with only a time stamp"):
        PromptSchedule.from_parsed(timed, loop=True)
    with pytest.raises(ConfigError, match="applies to time-stamped files"):
        PromptSchedule.from_parsed(untimed, transition_seconds=2.0)
    with pytest.raises(TypeError):
        PromptSchedule.from_parsed(untimed, intervall=2)  # unknown options are errors
    with pytest.raises(ConfigError):
        PromptEntry(prompt="  ")


# ------------------------------------------------------------------------------------------------
# schedules and embeddings
# ------------------------------------------------------------------------------------------------
def test_three_prompts_over_six_chunks_weights_and_embeddings(tiny_encode):
    schedule = PromptSchedule.from_text("a red fox\na blue whale | murky\na green forest\n", interval=2)
    # chunk c in segment i = c // 2 is (1 - w) * P[i] + w * P[i+1], w = (c % 2) / 2; stays on the last
    expected = [
        ("a red fox", "a red fox", 0.0),
        ("a red fox", "a blue whale", 0.5),
        ("a blue whale", "a blue whale", 0.0),
        ("a blue whale", "a green forest", 0.5),
        ("a green forest", "a green forest", 0.0),
        ("a green forest", "a green forest", 0.0),
    ]
    assert [schedule.weights_at(c) for c in range(6)] == expected

    calls = []

    def counting_encode(prompt):
        calls.append(prompt)
        return tiny_encode(prompt)

    blender = PromptBlender(counting_encode, default_negative="")
    live = LiveSettings(prompt="ignored, the schedule wins", negative_prompt="", schedule=schedule)
    E = {p: tiny_encode(p) for p in ("a red fox", "a blue whale", "a green forest", "", "murky")}
    negatives = {"a red fox": "", "a blue whale": "murky", "a green forest": ""}
    for c, (a, b, w) in enumerate(expected):
        settings = live.next_chunk(c)
        cond, uncond = blender(settings.blend)
        assert settings.blend.weight_by_prompt == pytest.approx({a: 1 - w, b: w} if a != b else {a: 1.0})
        torch.testing.assert_close(cond, (1 - w) * E[a] + w * E[b], rtol=0, atol=1e-6)
        torch.testing.assert_close(uncond, (1 - w) * E[negatives[a]] + w * E[negatives[b]], rtol=0, atol=1e-6)
        assert cond.shape == (1, 16, 16)
    # each prompt (and negative) encoded exactly once
    assert sorted(calls) == sorted(["a red fox", "a blue whale", "a green forest", "", "murky"])
    # the blends differ from chunk to chunk where the weights do
    assert not torch.allclose(blender(live.settings_for_chunk(5).blend)[0], E["a red fox"])


def test_loop_vs_stay_on_last():
    stay = PromptSchedule.from_text("a\nb\nc\n", interval=2)
    loop = PromptSchedule.from_text("a\nb\nc\n", interval=2, loop=True)
    assert [stay.weights_at(c) for c in (4, 5, 6, 100)] == [("c", "c", 0.0)] * 4
    assert [loop.weights_at(c) for c in (4, 5, 6, 7, 12)] == [
        ("c", "c", 0.0), ("c", "a", 0.5), ("a", "a", 0.0), ("a", "b", 0.5), ("a", "a", 0.0)]
    four = PromptSchedule.from_text("a\nb\n", interval=4)
    assert [four.weights_at(c)[2] for c in range(4)] == [0.0, 0.25, 0.5, 0.75]
    one = PromptSchedule.from_text("a\nb\n", interval=1)
    assert [one.weights_at(c) for c in range(3)] == [("a", "a", 0.0), ("b", "b", 0.0), ("b", "b", 0.0)]
    assert PromptSchedule.from_text("a\nb\n").effective_interval == 4
    assert [u["at_chunk"] for u in loop.upcoming(1, count=4)] == [2, 4, 6, 8]
    assert [u["prompt"] for u in stay.upcoming(1)] == ["b", "c"]


def test_timed_lines_switch_at_the_output_time():
    schedule = PromptSchedule.from_text("00:00 dawn\n00:02 noon\n00:03.5 dusk\n")
    fps, frames_per_chunk = 4.0, 3  # chunk c starts at first_frame / fps = 0.75 * c seconds
    prompts = [schedule.blend_at(c, c * frames_per_chunk / fps).description for c in range(8)]
    # starts: 0, .75, 1.5, 2.25, 3.0, 3.75, 4.5, 5.25 -> noon from 2.25 (first start >= 2), dusk from 3.75
    assert prompts == ["dawn", "dawn", "dawn", "noon", "noon", "dusk", "dusk", "dusk"]
    # a chunk starting exactly on the stamp switches (float rounding tolerated)
    assert schedule.blend_at(0, 16 * (1 / 8)).description == "noon"
    assert schedule.blend_at(0, 0.1 * 3 + 1.7).description == "noon"
    with pytest.raises(ValueError, match="start_time"):
        schedule.blend_at(3)
    assert [u["at"] for u in schedule.upcoming(0, 0.0)] == ["00:02", "00:03.5"]


def test_timed_first_stamp_covers_the_start_and_transition_seconds():
    schedule = PromptSchedule.from_text("00:10 a\n00:20 b\n", transition_seconds=4.0)
    assert schedule.blend_at(0, 0.0).description == "a"
    assert schedule.weights_at(0, 19.0) == ("a", "a", 0.0)
    assert schedule.weights_at(0, 20.0) == ("a", "a", 0.0)  # the fade towards b starts at its stamp
    assert schedule.weights_at(0, 21.0) == ("a", "b", 0.25)
    assert schedule.weights_at(0, 23.0) == ("a", "b", 0.75)
    assert schedule.weights_at(0, 24.0) == ("b", "b", 0.0)


def test_timed_loop_repeats_every_end_time():
    schedule = PromptSchedule.from_text("00:00 a\n00:10 b\n00:30\n", loop=True)
    assert [schedule.blend_at(0, t).description for t in (0, 9.9, 10, 29.9, 30, 40, 65)] == [
        "a", "a", "b", "b", "a", "b", "a"]
    stay = PromptSchedule.from_text("00:00 a\n00:10 b\n00:30\n")
    assert stay.blend_at(0, 65).description == "b"
    late_start = PromptSchedule.from_text("00:05 a\n00:10 b\n00:20\n", loop=True)
    # before the first stamp of a later cycle the previous cycle's last prompt goes on
    assert [late_start.blend_at(0, t).description for t in (0, 21, 25)] == ["a", "b", "a"]


def test_blender_caches_and_is_bounded():
    calls = []

    def encode(p):
        calls.append(p)
        return torch.full((1, 2), float(len(p)))

    blender = PromptBlender(encode, cache_size=3)
    blend = PromptBlend.pair("aa", "bbbb", 0.25)
    cond, uncond = blender(blend)
    torch.testing.assert_close(cond, torch.tensor([[0.75 * 2 + 0.25 * 4] * 2]))
    torch.testing.assert_close(uncond, torch.zeros(1, 2))  # "" encodes to zeros here
    blender(blend)
    assert blender.encode_calls == 3
    blender.encode("c")  # evicts the least recently used
    assert len(blender._cache) == 3 and "aa" not in blender._cache and blender.encode_calls == 4
    # a single prompt returns the cached tensor itself (no arithmetic, bit-exact)
    assert blender.mix([("c", 1.0)]) is blender.encode("c")
    with pytest.raises(ConfigError):
        PromptBlender(encode, cache_size=1)


def test_blend_description_and_merging():
    b = PromptBlend.from_weighted([("a", None, 0.5), ("b", "n", 0.25), ("a", None, 0.25), ("c", None, 0.0)])
    assert [(t.prompt, t.weight) for t in b.terms] == [("a", 0.75), ("b", 0.25)]
    assert b.description == "a (75%) + b (25%)"
    assert b.dominant == "a"
    assert PromptBlend.single("x").description == "x"
    with pytest.raises(ValueError):
        PromptBlend(())


# ------------------------------------------------------------------------------------------------
# live updates
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "message, field",
    [
        ({"command": "set_prompt"}, "prompt"),
        ({"command": "set_prompt", "prompt": ""}, "prompt"),
        ({"command": "set_prompt", "prompt": 3}, "prompt"),
        ({"command": "set_prompt", "prompt": "x", "transition": -1}, "transition"),
        ({"command": "set_prompt", "prompt": "x", "transition": 1.5}, "transition"),
        ({"command": "set_prompt", "prompt": "x", "colour": "red"}, "colour"),
        ({"command": "set_guidance", "guidance_scale": -1}, "guidance_scale"),
        ({"command": "set_guidance", "guidance_scale": "7"}, "guidance_scale"),
        ({"command": "set_guidance", "guidance_scale": True}, "guidance_scale"),
        ({"command": "set_conditioning", "min": 0, "max": 3}, "min"),
        ({"command": "set_conditioning", "min": 4, "max": 3}, "max"),
        ({"command": "set_conditioning", "min": 1, "max": 2.0}, "max"),
        ({"command": "set_seed", "seed": -1}, "seed"),
        ({"command": "set_seed", "seed": 2**64}, "seed"),
        ({"command": "set_negative_prompt", "negative_prompt": None}, "negative_prompt"),
        ({"command": "pause", "now": True}, "now"),
        ({"command": "dance"}, "command"),
        ({"prompt": "x"}, "command"),
        (["set_prompt"], None),
    ],
)
def test_validate_update_names_the_field(message, field):
    with pytest.raises(UpdateError) as info:
        validate_update(message)
    assert info.value.field == field


def test_validate_update_normalizes():
    assert validate_update({"command": "set_guidance", "guidance_scale": 7}) == {"command": "set_guidance", "guidance_scale": 7.0}
    assert validate_update({"command": "set_prompt", "prompt": " x ", "negative_prompt": None}) == {"command": "set_prompt", "prompt": "x"}
    assert validate_update({"command": "status"}) == {"command": "status"}


def test_live_settings_from_config_and_scalar_updates():
    config = GenerationConfig(prompt="a cat", negative_prompt="ugly", guidance_scale=9.0,
                              min_conditioning_frames=2, max_conditioning_frames=4, seed=7)
    live = LiveSettings.from_config(config)
    s0 = live.settings_for_chunk(0)
    assert (s0.prompt, s0.negative_prompt, s0.guidance_scale, s0.min_conditioning_frames,
            s0.max_conditioning_frames, s0.seed, s0.reseed) == ("a cat", "ugly", 9.0, 2, 4, 7, False)
    live.apply({"command": "set_guidance", "guidance_scale": 3}, at_chunk=2)
    live.apply({"command": "set_conditioning", "min": 1, "max": 1}, at_chunk=3)
    live.apply({"command": "set_seed", "seed": 99}, at_chunk=3)
    live.apply({"command": "set_guidance", "guidance_scale": 4}, at_chunk=3)
    got = [(s.guidance_scale, s.max_conditioning_frames, s.seed, s.reseed)
           for s in (live.next_chunk(c) for c in range(5))]
    assert got == [(9.0, 4, 7, False), (9.0, 4, 7, False), (3.0, 4, 7, False), (4.0, 1, 99, True), (4.0, 1, 99, False)]
    with pytest.raises(ValueError, match="forgotten"):
        live.settings_for_chunk(1)
    with pytest.raises(UpdateError):
        live.apply({"command": "pause"}, at_chunk=5)
    with pytest.raises(ConfigError):
        LiveSettings(prompt="x", min_conditioning_frames=3, max_conditioning_frames=2)


def test_live_prompt_overrides_schedule_with_transition():
    schedule = PromptSchedule.from_text("a\nb\nc\n", interval=2)
    live = LiveSettings(prompt="unused", negative_prompt="neg", schedule=schedule)
    live.apply({"command": "set_prompt", "prompt": "z", "transition": 4}, at_chunk=2)
    weights = [live.next_chunk(c).blend.weight_by_prompt for c in range(8)]
    assert weights[0] == {"a": 1.0}
    assert weights[1] == pytest.approx({"a": 0.5, "b": 0.5})
    # from chunk 2 the schedule (b, then b->c) fades out over 4 chunks: z gets 1/4, 2/4, 3/4, 1
    assert weights[2] == pytest.approx({"b": 0.75, "z": 0.25})
    assert weights[3] == pytest.approx({"b": 0.25, "c": 0.25, "z": 0.5})
    assert weights[4] == pytest.approx({"c": 0.25, "z": 0.75})
    assert weights[5:] == [{"z": 1.0}] * 3
    assert live.schedule is None  # fully replaced after the transition
    assert live.upcoming(7) == []
    # an immediate switch (transition 0) with its own negative shows at the announced chunk
    live.apply({"command": "set_prompt", "prompt": "y", "negative_prompt": "dark"}, at_chunk=8)
    s = live.next_chunk(8)
    assert (s.prompt, s.negative_prompt) == ("y", "dark")


def test_negative_prompt_precedence():
    schedule = PromptSchedule.from_text("a | line-neg\nb\n", interval=1)
    live = LiveSettings(prompt="unused", negative_prompt="base", schedule=schedule)
    assert [live.settings_for_chunk(c).negative_prompt for c in (0, 1)] == ["line-neg", "base"]
    live.apply({"command": "set_negative_prompt", "negative_prompt": "live"}, at_chunk=3)
    live.apply({"command": "set_prompt", "prompt": "p", "negative_prompt": "own"}, at_chunk=5)
    live.apply({"command": "set_negative_prompt", "negative_prompt": "newest"}, at_chunk=7)
    assert [live.settings_for_chunk(c).negative_prompt for c in (2, 3, 5, 7)] == ["base", "live", "own", "newest"]
    schedule2 = PromptSchedule.from_text("a | line-neg\nb\n", interval=1)
    live2 = LiveSettings(prompt="unused", schedule=schedule2)
    live2.apply({"command": "set_negative_prompt", "negative_prompt": "live"}, at_chunk=0)
    assert live2.settings_for_chunk(0).negative_prompt == "live"  # live beats the file's line


def test_live_upcoming_lists_schedule_then_live():
    live = LiveSettings(prompt="x", schedule=PromptSchedule.from_text("a\nb\nc\n", interval=3))
    assert [(u["prompt"], u["at_chunk"], u["source"]) for u in live.upcoming(0)] == [("b", 3, "file"), ("c", 6, "file")]
    live.apply({"command": "set_prompt", "prompt": "z", "transition": 3}, at_chunk=4)
    assert [(u["prompt"], u["from_chunk"], u["at_chunk"]) for u in live.upcoming(4)] == [("z", 4, 6)]


# ------------------------------------------------------------------------------------------------
# the update channel between threads (processes: tests/test_control.py)
# ------------------------------------------------------------------------------------------------
def test_channel_applies_at_the_announced_chunk_and_pauses():
    channel = UpdateChannel()
    live = LiveSettings(prompt="start")
    try:
        assert channel.submit({"command": "set_prompt", "prompt": "first"}) == 0
        s = live.next_chunk(0, channel=channel)
        assert s.prompt == "first"
        assert channel.submit({"command": "set_prompt", "prompt": "second"}) == 1
        assert live.next_chunk(1, channel=channel).prompt == "second"
        assert channel.pause() == 2
        started = threading.Event()

        def producer():
            live.next_chunk(2, channel=channel, poll=0.02)
            started.set()

        t = threading.Thread(target=producer)
        t.start()
        time.sleep(0.2)
        assert not started.is_set()  # chunk 2 waits while paused
        assert channel.state()["paused"]
        assert channel.resume() == 2
        assert started.wait(5)
        t.join(5)
        assert channel.stop() == 3
        assert live.next_chunk(3, channel=channel) is None
        with pytest.raises(UpdateError, match="stopping"):
            channel.submit({"command": "set_seed", "seed": 1})
        with pytest.raises(UpdateError):
            channel.submit({"command": "pause"})
    finally:
        channel.close()


def test_channel_stop_releases_a_paused_producer():
    channel = UpdateChannel()
    try:
        channel.pause()
        result = []
        t = threading.Thread(target=lambda: result.append(channel.begin_chunk(0, poll=0.02)))
        t.start()
        time.sleep(0.1)
        channel.stop()
        t.join(5)
        assert result == [None]
    finally:
        channel.close()
    channel = UpdateChannel()
    try:
        channel.pause()
        assert channel.begin_chunk(0, poll=0.01, abort=lambda: True) is None  # the runtime is gone
    finally:
        channel.close()
