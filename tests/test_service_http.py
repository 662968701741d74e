"""`continuityseq-stream serve` over HTTP, for real: the command in its own process on the synthetic
source, steered and read with HTTP requests on 127.0.0.1 (status, every control command, schedule,
OpenAPI, one-line errors, token, request size and rate limits, /metrics parsed with prometheus-client,
/healthz when the producer is killed), and bad server flags refused with one line and status 2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from continuityseq_stream.service.openapi import openapi_document

from service_helpers import BASE, Served, children_pids, request

TOKEN = "tok-" + "s3cr3t" * 4


@pytest.fixture(scope="module")
def served():
    s = Served([])
    yield s
    s.stop()


def _status_at(served, chunk_at_least):
    status = served.status()
    return status if status.get("current_chunk", -1) >= chunk_at_least else None


@pytest.mark.slow
def test_status_and_a_prompt_change_reach_the_stream(served):
    first = served.wait_for(lambda: _status_at(served, 1), what="the first chunks")
    assert first["prompt"] == "a red fox" and first["out_fps"] == 20.0 and first["phase"] == "running"
    code, _, answer = request("POST", served.url + "api/prompt", {"prompt": "a blue ocean", "transition": 0})
    assert code == 200 and answer["ok"] and answer["command"] == "set_prompt"
    at = answer["applies_at_chunk"]
    shown = served.wait_for(lambda: _status_at(served, at), what=f"chunk {at}")
    assert shown["prompt"] == "a blue ocean"
    code, _, schedule = request("GET", served.url + "api/schedule")
    assert code == 200 and schedule["prompt"] == "a blue ocean" and schedule["scheduled"] == []


@pytest.mark.slow
def test_every_setting_command_is_accepted_and_shown(served):
    served.wait_for(lambda: _status_at(served, 1), what="the first chunks")
    last = 0
    for route, body in [("guidance", {"guidance_scale": 7.5}), ("conditioning", {"min": 2, "max": 3}),
                        ("seed", {"seed": 42}), ("negative-prompt", {"negative_prompt": "blurry"})]:
        code, _, answer = request("POST", served.url + f"api/{route}", body)
        assert code == 200 and answer["ok"], answer
        last = max(last, answer["applies_at_chunk"])
    code, _, answer = request("POST", served.url + "api/command",
                              {"command": "set_prompt", "prompt": "a green field", "transition": 3})
    assert code == 200, answer
    status = served.wait_for(lambda: _status_at(served, last), what=f"chunk {last}")
    assert (status["guidance_scale"], status["conditioning"], status["seed"], status["negative_prompt"]) == (
        7.5, [2, 3], 42, "blurry")


@pytest.mark.slow
def test_pause_holds_the_producer_and_resume_goes_on(served):
    served.wait_for(lambda: _status_at(served, 1), what="the first chunks")
    code, _, answer = request("POST", served.url + "api/pause")
    assert code == 200 and answer["paused"] is True
    held = served.wait_for(lambda: (lambda s: s if s.get("paused") else None)(served.status()), what="paused")
    import time

    time.sleep(1.5)
    later = served.status()
    assert later["chunks_made"] <= held["chunks_made"] + 1  # at most the chunk in progress
    assert later["health"]["healthy"] is True
    code, _, answer = request("POST", served.url + "api/resume")
    assert code == 200 and answer["paused"] is False
    served.wait_for(lambda: served.status()["chunks_made"] > later["chunks_made"] + 1, what="chunks after resume")


@pytest.mark.slow
def test_bad_requests_get_one_json_line_each(served):
    cases = [
        ("POST", "api/guidance", {"guidance_scale": -1}, 400, "guidance_scale"),
        ("POST", "api/prompt", {"prompt": ""}, 400, "prompt"),
        ("POST", "api/prompt", {"prompt": "x", "colour": "red"}, 400, "colour"),
        ("POST", "api/seed", "{not json", 400, None),
        ("POST", "api/pause", {"command": "stop"}, 400, "command"),
        ("POST", "api/command", {"command": "explode"}, 400, "command"),
        ("POST", "api/prompt", {"prompt": "x" * 70_000}, 413, None),
        ("GET", "api/nothing", None, 404, None),
        ("GET", "api/prompt", None, 405, None),
    ]
    for method, path, body, want, field in cases:
        code, headers, answer = request(method, served.url + path, body)
        assert code == want, (path, body, answer)
        assert answer["ok"] is False and answer.get("field") == field, answer
        assert "\n" not in answer["error"] and len(answer["error"]) < 400, answer
    assert "larger than 65536 bytes" in request("POST", served.url + "api/prompt", {"prompt": "x" * 70_000})[2]["error"]


@pytest.mark.slow
def test_openapi_document_is_served(served):
    code, _, doc = request("GET", served.url + "openapi.json")
    assert code == 200 and doc == openapi_document()


@pytest.mark.slow
def test_metrics_parse_and_count_what_happened(served):
    served.wait_for(lambda: served.status().get("chunks_made", 0) >= 4, what="4 chunks")
    request("POST", served.url + "api/seed", {"seed": 5})
    request("POST", served.url + "api/seed", {"seed": -5})
    code, headers, text = request("GET", served.url + "metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    status = served.status()
    assert samples[("continuityseq_chunks_total", ())] >= 4
    assert samples[("continuityseq_frames_made_total", ())] >= 4 * 4
    assert samples[("continuityseq_frames_delivered_total", (("kind", "sink"), ("output", "service")))] > 0
    assert samples[("continuityseq_output_fps", ())] == 20.0
    assert samples[("continuityseq_ring_slots", ())] == 16
    assert samples[("continuityseq_rss_bytes", (("process", "main"),))] > 20e6
    assert 1e6 < samples[("continuityseq_rss_bytes", (("process", "producer"),))] < status["frames_made"] * 1e9
    assert samples[("continuityseq_chunk_seconds_count", ())] >= 3
    # 4 frames a chunk at 20 fps, paced by the stream clock: about 0.2 s a chunk
    mean = samples[("continuityseq_chunk_seconds_sum", ())] / samples[("continuityseq_chunk_seconds_count", ())]
    assert 0.1 < mean < 2.0
    assert samples[("continuityseq_seam_score_count", ())] >= 2
    assert samples[("continuityseq_commands_total", (("result", "ok"), ("surface", "http")))] >= 1
    assert samples[("continuityseq_commands_total", (("result", "error"), ("surface", "http")))] >= 1
    assert samples[("continuityseq_healthy", ())] == 1.0


@pytest.mark.slow
def test_token_guards_everything_but_page_and_health_and_rate_is_limited():
    s = Served(["--rate", "2", "--burst", "6"], env={"CONTINUITYSEQ_TOKEN": TOKEN})
    try:
        assert TOKEN not in "\n".join(s.lines)
        for path in ("api/status", "metrics", "api/schedule"):
            code, headers, answer = request("GET", s.url + path)
            assert code == 401 and "Bearer" in headers["WWW-Authenticate"] and "bearer token" in answer["error"]
        assert request("POST", s.url + "api/pause", token="wrong" * 5)[0] == 401
        assert request("GET", s.url + "api/status", token=TOKEN)[0] == 200
        assert request("GET", s.url + "healthz")[0] == 200
        codes = [request("GET", s.url + "healthz")[:2] for _ in range(12)]
        refused = [h for c, h in codes if c == 429]
        assert refused and int(refused[0]["Retry-After"]) >= 1
    finally:
        s.stop()


@pytest.mark.slow
def test_healthz_turns_unhealthy_when_the_producer_is_killed():
    s = Served(["--linger", "60"])
    try:
        s.wait_for(lambda: request("GET", s.url + "healthz")[2].get("status") == "ok", what="healthy")
        producer = children_pids(s.proc.pid, "spawn_main")
        assert len(producer) == 1
        os.kill(producer[0], signal.SIGKILL)
        health = s.wait_for(lambda: (lambda r: r if r[0] == 503 else None)(request("GET", s.url + "healthz")),
                            what="unhealthy")
        assert health[2]["healthy"] is False and health[2]["status"] in ("producer-dead", "ended")
        ended = s.wait_for(lambda: (lambda r: r if r[2]["status"] == "ended" else None)(request("GET", s.url + "healthz")),
                           what="ended")
        assert ended[2]["reason"] == "the stream ended (exit status 1)"
    finally:
        assert s.stop() == 1
    assert any("producer process died unexpectedly" in line for line in s.lines)


@pytest.mark.slow
def test_stop_over_http_ends_the_run_cleanly():
    s = Served([])
    s.wait_for(lambda: s.status().get("chunks_made", 0) >= 2, what="2 chunks")
    code, _, answer = request("POST", s.url + "api/stop")
    assert code == 200 and answer["command"] == "stop"
    assert s.proc.wait(60) == 0


def _serve_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "continuityseq_stream.cli", *BASE, "-p", "x", *args],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **(env or {})))


@pytest.mark.slow
def test_bad_server_flags_are_one_line_and_status_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cases = [
            (["--host", "0.0.0.0"], "--host: '0.0.0.0' is not a loopback address"),
            (["--token", "short"], "--token: use at least 16"),
            (["--osc", "127.0.0.1:99999"], "--osc: port '99999'"),
            (["--rate", "0"], "--rate: got 0.0"),
            (["--port", str(port)], f"--port: cannot listen on 127.0.0.1:{port}"),
        ]
        for args, message in cases:
            run = _serve_cli(*args)
            assert run.returncode == 2, (args, run.stderr)
            lines = run.stderr.strip().splitlines()
            assert len(lines) == 1 and message in lines[0] and "Traceback" not in run.stderr, (args, run.stderr)
