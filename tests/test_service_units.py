"""The service's pieces in process, no servers: options, the dispatcher's argument rules, rate limits,
the health rule, the stream clock (hub), the tap's chunk events and seam scores, the OpenAPI schema."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from continuityseq_stream.chunk import FrameMeta
from continuityseq_stream.errors import ConfigError
from continuityseq_stream.prompts import COMMANDS, UpdateError
from continuityseq_stream.service.dispatcher import Dispatcher, command_from
from continuityseq_stream.service.events import EventBus
from continuityseq_stream.service.health import AUTO_MIN_SECONDS, evaluate_health
from continuityseq_stream.service.hub import FrameHub
from continuityseq_stream.service.limits import RateLimiter
from continuityseq_stream.service.openapi import COMMAND_ROUTES, openapi_document
from continuityseq_stream.service.options import ServiceOptions, parse_hostport
from continuityseq_stream.service.tap import TapSink
from continuityseq_stream.sinks.base import StreamInfo

TOKEN = "x" * 24


# -- options -------------------------------------------------------------------------------------------
def test_loopback_needs_no_token_but_any_other_bind_does():
    assert ServiceOptions().host == "127.0.0.1"
    assert ServiceOptions(host="::1").token is None
    with pytest.raises(ConfigError, match=r"--host: '0.0.0.0' is not a loopback address.*--token"):
        ServiceOptions(host="0.0.0.0")
    assert ServiceOptions(host="0.0.0.0", token=TOKEN).token == TOKEN


@pytest.mark.parametrize("token", ["short", "with space inside it ok", "x" * 15])
def test_weak_tokens_are_refused(token):
    with pytest.raises(ConfigError, match="--token: use at least 16 printable characters without spaces"):
        ServiceOptions(token=token)


def test_osc_off_loopback_needs_its_own_flag_and_unknown_options_are_errors():
    with pytest.raises(ConfigError, match="--osc: '10.1.2.3' is not a loopback address"):
        ServiceOptions(osc=("10.1.2.3", 9000))
    assert ServiceOptions(osc=("10.1.2.3", 9000), osc_allow_remote=True).osc == ("10.1.2.3", 9000)
    with pytest.raises(ConfigError, match="unknown service option.*bogus"):
        ServiceOptions.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="--port: got 70000"):
        ServiceOptions(port=70000)


def test_parse_hostport():
    assert parse_hostport("9000", "--osc") == ("127.0.0.1", 9000)
    assert parse_hostport("[::1]:9000", "--osc") == ("::1", 9000)
    with pytest.raises(ConfigError, match=r"--osc: port '99999' in 'h:99999'; use a port in 1..65535"):
        parse_hostport("h:99999", "--osc")


# -- dispatcher ------------------------------------------------------------------------------------------
def test_command_from_refuses_a_second_command_and_non_objects():
    assert command_from("set_seed", {"seed": 3}) == {"command": "set_seed", "seed": 3}
    assert command_from("pause") == {"command": "pause"}
    with pytest.raises(UpdateError, match="names another command"):
        command_from("pause", {"command": "stop"})
    with pytest.raises(UpdateError, match="must be a JSON object"):
        command_from("set_seed", [1])


def test_dispatcher_answers_bad_commands_and_a_missing_stream_in_one_line(tmp_path):
    d = Dispatcher(f"ipc://{tmp_path}/absent", timeout=0.5)
    try:
        bad = d.dispatch({"command": "set_guidance", "guidance_scale": "high"})
        assert bad["ok"] is False and bad["field"] == "guidance_scale" and "\n" not in bad["error"]
        assert "unavailable" not in bad
        gone = d.dispatch({"command": "pause"})
        assert gone["ok"] is False and gone["unavailable"] is True and "not answering" in gone["error"]
        assert (d.commands, d.errors) == (2, 2)
    finally:
        d.close()


# -- rate limits -----------------------------------------------------------------------------------------
def test_rate_limiter_allows_a_burst_then_refills_at_the_rate():
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.allow("a") == pytest.approx(0.5)
    assert limiter.allow("b") == 0.0  # another client has its own bucket
    now[0] += 0.5
    assert limiter.allow("a") == 0.0
    assert limiter.allow("a") > 0 and limiter.refused == 2


def test_rate_limiter_memory_is_bounded():
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=10)
    for i in range(1000):
        limiter.allow(f"client{i}")
    assert len(limiter._buckets) == 10


# -- health ------------------------------------------------------------------------------------------------
def _health(**kw):
    base = dict(ended=False, exit_status=None, producer_seen=True, producer_alive=True, chunk_age=1.0,
                last_interval=2.0, paused=False, timeout=None)
    return evaluate_health(**{**base, **kw})


def test_health_rule():
    assert _health().status == "ok" and _health().healthy
    assert _health(chunk_age=None, producer_seen=False, producer_alive=False).status == "starting"
    dead = _health(producer_alive=False)
    assert (dead.healthy, dead.status) == (False, "producer-dead")
    ended = _health(ended=True, exit_status=1)
    assert (ended.healthy, ended.reason) == (False, "the stream ended (exit status 1)")
    # automatic limit: 4 x the chunk interval, at least AUTO_MIN_SECONDS
    assert _health(chunk_age=AUTO_MIN_SECONDS - 1).healthy
    assert _health(chunk_age=AUTO_MIN_SECONDS + 1).status == "stalled"
    assert _health(chunk_age=50, last_interval=20).healthy and not _health(chunk_age=81, last_interval=20).healthy
    assert _health(chunk_age=3, timeout=2.0).status == "stalled"
    assert _health(chunk_age=1000, paused=True).healthy  # a pause is not a stall


# -- the stream clock --------------------------------------------------------------------------------------
def _meta(i, chunk=0, prompt="p"):
    return FrameMeta(index=i, chunk=chunk, pts=i / 10, prompt=prompt)


def test_hub_plays_a_burst_at_fps_and_holds_the_last_frame():
    now = [100.0]
    hub = FrameHub(fps=10, lead=10.0, clock=lambda: now[0])
    for i in range(5):  # a whole chunk arrives at once
        hub.push(np.full((2, 2, 3), i, np.uint8), _meta(i))
    shown = []
    for step in range(8):
        now[0] = 100.0 + step * 0.1 + 1e-9
        shown.append(hub.latest().meta.index)
    assert shown == [0, 1, 2, 3, 4, 4, 4, 4]
    now[0] = 120.0  # generation was behind: the next frame is due when it arrives, no catching up
    hub.push(np.zeros((2, 2, 3), np.uint8), _meta(5))
    assert hub.latest().meta.index == 5 and hub.latest().due == 120.0


def test_hub_latest_skips_what_a_slow_viewer_missed():
    now = [0.0]
    hub = FrameHub(fps=10, lead=10.0, clock=lambda: now[0])
    for i in range(10):
        hub.push(np.zeros((1, 1, 3), np.uint8), _meta(i))
    now[0] = 0.55
    assert hub.latest().meta.index == 5
    assert hub.backlog() == 5


def test_hub_push_waits_for_the_clock_when_generation_is_ahead_and_close_frees_it():
    hub = FrameHub(fps=50, lead=0.1)
    started = time.monotonic()
    for i in range(15):  # 15 frames = 0.3 s of video; at most 0.1 s may be held ahead
        assert hub.push(np.zeros((1, 1, 3), np.uint8), _meta(i))
    assert time.monotonic() - started >= 0.15
    assert hub.waited >= 0.15
    blocked = FrameHub(fps=1, lead=0.5)
    blocked.push(np.zeros((1, 1, 3), np.uint8), _meta(0))
    result = []
    t = threading.Thread(target=lambda: result.append(blocked.push(np.zeros((1, 1, 3), np.uint8), _meta(1))))
    t.start()
    time.sleep(0.1)
    blocked.close()
    t.join(5)
    assert result == [False]


# -- the tap ------------------------------------------------------------------------------------------------
def _frames(values):
    return [np.full((8, 8, 3), v, np.uint8) for v in values]


def test_tap_publishes_chunk_and_seam_events():
    bus, events = EventBus(), []
    bus.subscribe(events.append)
    tap = TapSink(FrameHub(fps=1000, lead=100.0), bus, chunk_frames=4)
    tap.open(StreamInfo(8, 8, 1000.0))
    # chunk 0: 0,2,4,6  chunk 1: 8,10,12,14 (smooth)  chunk 2: 40,42,44,46 (a jump of 26 at the seam)
    values = [0, 2, 4, 6, 8, 10, 12, 14, 40, 42, 44, 46]
    for i, (v, f) in enumerate(zip(values, _frames(values))):
        tap.write(f, _meta(i, chunk=i // 4, prompt=f"prompt {i // 4}"))
    tap.close()
    chunks = [e for e in events if e["event"] == "chunk"]
    seams = [e for e in events if e["event"] == "seam"]
    assert [(e["chunk"], e["prompt"], e["first_frame"]) for e in chunks] == [
        (0, "prompt 0", 0), (1, "prompt 1", 4), (2, "prompt 2", 8)]
    assert chunks[0]["interval"] is None and chunks[1]["interval"] >= 0
    assert [s["chunk"] for s in seams] == [1, 2]
    assert seams[0]["seam_score"] == pytest.approx(1.0)        # smooth: the boundary step is like the others
    assert seams[1]["boundary_diff"] == pytest.approx(26.0)
    assert seams[1]["seam_score"] == pytest.approx(26.0 / 2.0)  # inside steps are 2
    assert tap.chunks == 3 and tap.frames_written == 12


def test_tap_gives_no_seam_for_an_incomplete_chunk():
    bus, events = EventBus(), []
    bus.subscribe(events.append)
    tap = TapSink(FrameHub(fps=1000, lead=100.0), bus, chunk_frames=4)
    tap.open(StreamInfo(8, 8, 1000.0))
    for i, f in zip([0, 1, 2, 4, 5, 6, 7], _frames([0, 1, 2, 4, 5, 6, 7])):  # frame 3 skipped
        tap.write(f, _meta(i, chunk=i // 4))
    tap.close()
    assert [e for e in events if e["event"] == "seam"] == []


# -- OpenAPI -------------------------------------------------------------------------------------------------
def test_openapi_lists_every_command_with_the_dispatchers_fields():
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    for route, command in COMMAND_ROUTES.items():
        op = doc["paths"][f"/api/{route}"]["post"]
        assert op["operationId"] == command
        if COMMANDS[command]:
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert set(schema["properties"]) == set(COMMANDS[command])
            assert set(schema["required"]) == {k for k, req in COMMANDS[command].items() if req}
    variants = doc["paths"]["/api/command"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert sorted(v["properties"]["command"]["const"] for v in variants) == sorted(COMMANDS)
    assert {"/healthz", "/metrics", "/api/status", "/api/schedule", "/whep"} <= set(doc["paths"])
