"""OSC against a real `serve` process: a python-osc client on 127.0.0.1 changes the prompt, pauses and
resumes, gets one-line /error answers for bad messages, and a telemetry listener receives the
per-chunk and fps messages."""

from __future__ import annotations

import socket
import time

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient

from service_helpers import Served, request


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answer(client: SimpleUDPClient, address: str, *args, timeout: float = 15.0) -> OscMessage:
    client.send_message(address, list(args) if args else None)
    raw = client.receive(timeout)
    assert raw, f"no OSC answer to {address} within {timeout} s"
    return OscMessage(raw)


@pytest.mark.slow
def test_osc_commands_and_telemetry():
    osc_port, tele_port = _free_udp_port(), _free_udp_port()
    telemetry = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    telemetry.bind(("127.0.0.1", tele_port))
    telemetry.settimeout(1.0)
    s = Served(["--osc", f"127.0.0.1:{osc_port}", "--osc-telemetry", f"127.0.0.1:{tele_port}"])
    client = SimpleUDPClient("127.0.0.1", osc_port)
    try:
        s.wait_for(lambda: s.status().get("current_chunk", -1) >= 1, what="the first chunks")
        ok = _answer(client, "/prompt", "a violet storm", 0)
        assert ok.address == "/ok" and ok.params[0] == "set_prompt"
        at = ok.params[1]
        status = s.wait_for(lambda: (lambda st: st if st.get("current_chunk", -1) >= at else None)(s.status()),
                            what=f"chunk {at}")
        assert status["prompt"] == "a violet storm"

        assert _answer(client, "/guidance", 9.5).params[0] == "set_guidance"
        paused = _answer(client, "/pause")
        assert (paused.address, paused.params[0]) == ("/ok", "pause")
        s.wait_for(lambda: s.status().get("paused") is True, what="paused")
        made = s.status()["chunks_made"]
        time.sleep(1.0)
        assert s.status()["chunks_made"] <= made + 1
        assert _answer(client, "/resume").params[0] == "resume"
        s.wait_for(lambda: s.status()["chunks_made"] > made + 1, what="chunks after resume")
        s.wait_for(lambda: s.status().get("guidance_scale") == 9.5, what="guidance 9.5")

        for address, args, message in [
            ("/guidance", ("high",), "'guidance_scale' must be a number"),
            ("/conditioning", (1,), "/conditioning takes i i, got 1 argument(s)"),
            ("/seed", (-4,), "'seed'"),
            ("/explode", (), "unknown OSC address '/explode'"),
        ]:
            error = _answer(client, address, *args)
            assert error.address == "/error" and message in error.params[0], (address, error.params)
            assert "\n" not in error.params[0]

        seen, violet = {}, None  # the socket also holds messages from before the prompt change
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (violet and {"/continuityseq/fps", "/continuityseq/seam"} <= set(seen)):
            try:
                raw = telemetry.recv(4096)
            except socket.timeout:
                continue
            message = OscMessage(raw)
            seen[message.address] = message.params
            if message.address == "/continuityseq/chunk" and message.params[1] == "a violet storm":
                violet = message.params
        assert violet is not None and violet[0] >= at, seen
        assert seen["/continuityseq/fps"][1] == pytest.approx(20.0)
        assert seen["/continuityseq/seam"][0] > 0

        metrics = request("GET", s.url + "metrics")[2]
        assert 'continuityseq_commands_total{result="ok",surface="osc"} 4.0' in metrics
        assert 'continuityseq_commands_total{result="error",surface="osc"} 4.0' in metrics
    finally:
        client.close()
        telemetry.close()
        s.stop()
