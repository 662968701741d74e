"""The control socket: protocol, server, client, CLI and the producer-side channel across processes.

Real ZeroMQ sockets on 127.0.0.1 (free ports via `tcp://127.0.0.1:*`), bounded timeouts.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest
import zmq
from click.testing import CliRunner

from continuityseq_stream.cli.app import flag_for
from continuityseq_stream.control import (
    ControlClient,
    ControlError,
    ControlServer,
    LiveController,
    check_control_address,
    control_command,
)
from continuityseq_stream.errors import ConfigError
from continuityseq_stream.prompts import LiveSettings, UpdateChannel, UpdateError

TIMEOUT = 5.0


class Recorder:
    """Callbacks that record what the server handed to the runtime."""

    def __init__(self) -> None:
        self.updates = []
        self.stops = 0
        self.next_chunk = 7

    def on_update(self, update):
        self.updates.append(update)
        return {"applies_at_chunk": self.next_chunk}

    def on_status(self):
        return {"chunks_made": 7, "gen_fps": 3.5, "output_fps": 16.0, "ring_fill": 0.25,
                "skipped": {"preview": 2}, "prompt": "a cat"}

    def on_stop(self):
        self.stops += 1
        return {"applies_at_chunk": self.next_chunk}


@pytest.fixture
def server():
    rec = Recorder()
    srv = ControlServer("tcp://127.0.0.1:*", on_update=rec.on_update, on_status=rec.on_status,
                        on_stop=rec.on_stop, poll_ms=20)
    with srv:
        srv.recorder = rec
        yield srv
    assert not srv.running


@pytest.fixture
def client(server):
    with ControlClient(server.address, timeout=TIMEOUT) as c:
        yield c


# ------------------------------------------------------------------------------------------------
# addresses
# ------------------------------------------------------------------------------------------------
def test_control_address_is_loopback_unless_allowed():
    for ok in ("tcp://127.0.0.1:5557", "tcp://localhost:1", "tcp://[::1]:65535", "tcp://127.0.0.1:*",
               "ipc:///tmp/x.sock"):
        assert check_control_address(ok) == ok
    for remote in ("tcp://0.0.0.0:5557", "tcp://*:5557", "tcp://192.168.1.5:5557", "tcp://eth0:5557"):
        with pytest.raises(ConfigError, match="not a loopback address.*control_allow_remote") as e:
            check_control_address(remote)
        assert e.value.render(flag_for).startswith("--control: ") and "--control-allow-remote" in e.value.render(flag_for)
        assert check_control_address(remote, allow_remote=True) == remote
    for bad in ("127.0.0.1:5557", "udp://127.0.0.1:1", "tcp://127.0.0.1:0", "tcp://127.0.0.1:x", "tcp://:5", "ipc://"):
        with pytest.raises(ConfigError, match="^control: "):
            check_control_address(bad)


def test_server_refuses_remote_and_reports_a_taken_port(server):
    rec = Recorder()
    with pytest.raises(ConfigError, match="not a loopback"):
        ControlServer("tcp://0.0.0.0:5557", on_update=rec.on_update, on_status=rec.on_status, on_stop=rec.on_stop)
    taken = ControlServer(server.address, on_update=rec.on_update, on_status=rec.on_status, on_stop=rec.on_stop)
    with pytest.raises(ConfigError, match="cannot bind"):
        taken.start()
    assert not taken.running


# ------------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "message",
    [
        {"command": "set_prompt", "prompt": "a dog", "transition": 3, "negative_prompt": "blurry"},
        {"command": "set_prompt", "prompt": "a dog"},
        {"command": "set_negative_prompt", "negative_prompt": ""},
        {"command": "set_guidance", "guidance_scale": 12.5},
        {"command": "set_conditioning", "min": 2, "max": 5},
        {"command": "set_seed", "seed": 42},
        {"command": "pause"},
        {"command": "resume"},
    ],
)
def test_each_change_round_trips(server, client, message):
    answer = client.call(message["command"], **{k: v for k, v in message.items() if k != "command"})
    assert answer == {"ok": True, "command": message["command"], "applies_at_chunk": 7}
    assert server.recorder.updates == [message]


def test_status_and_stop_use_their_callbacks(server, client):
    status = client.call("status")
    assert status["ok"] and status["chunks_made"] == 7 and status["skipped"] == {"preview": 2}
    assert server.recorder.updates == []
    assert client.call("stop") == {"ok": True, "command": "stop", "applies_at_chunk": 7}
    assert server.recorder.stops == 1


@pytest.mark.parametrize(
    "payload, field, fragment",
    [
        (b"{not json", None, "malformed JSON"),
        (b"\xff\xfe", None, "malformed JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"command": "dance"}', "command", "unknown command 'dance'; known commands: set_prompt"),
        (b'{"prompt": "x"}', "command", "'command' must be one of"),
        (b'{"command": "set_guidance", "guidance_scale": "high"}', "guidance_scale", "must be a number >= 0"),
        (b'{"command": "set_seed", "seed": 1.5}', "seed", "must be an integer"),
        (b'{"command": "set_conditioning", "min": 3, "max": 2}', "max", "must be >= 'min'"),
        (b'{"command": "set_prompt", "prompt": "x", "speed": 2}', "speed", "takes prompt, transition, negative_prompt"),
        (b'{"command": "status", "verbose": true}', "verbose", "status takes no fields"),
    ],
)
def test_bad_requests_get_errors_and_the_server_keeps_serving(server, client, payload, field, fragment):
    answer = client.request(payload)
    assert answer["ok"] is False and answer["field"] == field
    assert fragment in answer["error"]
    assert server.recorder.updates == [] and server.recorder.stops == 0
    assert client.call("status")["ok"]
    assert server.running and server.errors == 1


def test_multipart_and_failing_callbacks_do_not_kill_the_loop(server):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    try:
        sock.send_multipart([b'{"command": "status"}', b"extra"])
        assert sock.poll(int(TIMEOUT * 1000))
        assert "multipart" in json.loads(sock.recv())["error"]
    finally:
        sock.close(linger=0)
        ctx.term()

    def boom(update):
        raise RuntimeError("kaput")

    def refuse(update):
        raise UpdateError("the stream is stopping", None)

    for callback, fragment in ((boom, "internal error while handling set_seed: RuntimeError: kaput"),
                               (refuse, "the stream is stopping")):
        server._on_update = callback
        with ControlClient(server.address, timeout=TIMEOUT) as c:
            answer = c.request({"command": "set_seed", "seed": 1})
            assert answer == {"ok": False, "error": fragment, "field": None}
            assert c.call("status")["ok"]


def test_client_times_out_and_recovers_with_a_fresh_socket():
    slow = threading.Event()

    def on_update(update):
        if not slow.is_set():
            slow.set()
            time.sleep(0.6)
        return {"applies_at_chunk": update["seed"]}

    with ControlServer("tcp://127.0.0.1:*", on_update=on_update, on_status=dict, on_stop=dict, poll_ms=20) as srv:
        with ControlClient(srv.address, timeout=0.2) as c:
            with pytest.raises(ControlError, match="no answer from .* within 0.2 s"):
                c.call("set_seed", seed=1)
            c.timeout = TIMEOUT
            # the late answer to the first request must not be taken for the second one
            assert c.call("set_seed", seed=2)["applies_at_chunk"] == 2
    with ControlClient("tcp://127.0.0.1:9", timeout=0.1) as c:  # nothing listens there
        with pytest.raises(ControlError):
            c.call("status")
    with pytest.raises(ControlError, match="field: seed"):
        with ControlServer("tcp://127.0.0.1:*", on_update=dict, on_status=dict, on_stop=dict, poll_ms=20) as srv, \
                ControlClient(srv.address, timeout=TIMEOUT) as c:
            c.call("set_seed", seed=-3)


def test_answers_with_numpy_values_or_nan_are_still_sent():
    import numpy as np

    statuses = iter([{"gen_fps": np.float32(2.5), "ring": np.arange(2), "sinks": {"a"}}, {"fps": float("nan")}])
    with ControlServer("tcp://127.0.0.1:*", on_update=dict, on_status=lambda: next(statuses), on_stop=dict,
                       poll_ms=20) as srv, ControlClient(srv.address, timeout=TIMEOUT) as c:
        assert c.call("status") == {"ok": True, "command": "status", "gen_fps": 2.5, "ring": [0, 1], "sinks": ["a"]}
        answer = c.request({"command": "status"})
        assert answer["ok"] is False and "could not be encoded" in answer["error"]
        assert c.request({"command": "resume"})["ok"]


def test_server_closes_quickly():
    srv = ControlServer("tcp://127.0.0.1:*", on_update=dict, on_status=dict, on_stop=dict, poll_ms=20).start()
    t0 = time.monotonic()
    srv.close()
    assert not srv.running and time.monotonic() - t0 < 1.0


# ------------------------------------------------------------------------------------------------
# CLI client
# ------------------------------------------------------------------------------------------------
def test_cli_prints_answers_and_exits_2_on_errors(server):
    runner = CliRunner()
    base = ["--address", server.address, "--timeout", "5"]
    result = runner.invoke(control_command, base + ["set-prompt", "a dog", "--transition", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"ok": True, "command": "set_prompt", "applies_at_chunk": 7}
    assert server.recorder.updates[-1] == {"command": "set_prompt", "prompt": "a dog", "transition": 2}
    for args, sent in (
        (["set-negative-prompt", "grainy"], {"command": "set_negative_prompt", "negative_prompt": "grainy"}),
        (["set-guidance", "7.5"], {"command": "set_guidance", "guidance_scale": 7.5}),
        (["set-conditioning", "2", "4"], {"command": "set_conditioning", "min": 2, "max": 4}),
        (["set-seed", "3"], {"command": "set_seed", "seed": 3}),
        (["pause"], {"command": "pause"}),
        (["resume"], {"command": "resume"}),
    ):
        result = runner.invoke(control_command, base + args)
        assert result.exit_code == 0, result.output
        assert server.recorder.updates[-1] == sent
    result = runner.invoke(control_command, base + ["status"])
    assert result.exit_code == 0 and json.loads(result.stdout)["ring_fill"] == 0.25
    result = runner.invoke(control_command, base + ["stop"])
    assert result.exit_code == 0 and server.recorder.stops == 1

    result = runner.invoke(control_command, base + ["set-conditioning", "5", "2"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip() == "error: set_conditioning: 'max' (2) must be >= 'min' (5) (field: max)"
    assert len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(control_command, base + ["send", '{"command": "jump"'])
    assert result.exit_code == 2 and result.stderr.startswith("error: malformed JSON")


def test_cli_timeout_exits_2():
    runner = CliRunner()
    result = runner.invoke(control_command, ["--address", "tcp://127.0.0.1:9", "--timeout", "0.2", "status"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: no answer from tcp://127.0.0.1:9 within 0.2 s; is a stream running with --control tcp://127.0.0.1:9?")


@pytest.mark.slow
def test_cli_client_in_another_process(server):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "continuityseq_stream.control.client", "--address", server.address]
    done = subprocess.run(cmd + ["set-prompt", "from another process"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["applies_at_chunk"] == 7
    assert server.recorder.updates[-1] == {"command": "set_prompt", "prompt": "from another process"}
    done = subprocess.run(cmd + ["set-guidance", "--", "-1"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "guidance_scale" in done.stderr


# ------------------------------------------------------------------------------------------------
# the whole seam: control socket -> LiveController -> UpdateChannel -> producer process
# ------------------------------------------------------------------------------------------------
def _producer(channel: UpdateChannel, results, chunks: int) -> None:
    """A stand-in for the producer child: fixes each chunk's settings like pipeline.stream() will."""
    live = LiveSettings(prompt="p0", schedule=None)
    try:
        for k in range(chunks):
            settings = live.next_chunk(k, channel=channel, timeout=10, poll=0.02)
            if settings is None:
                results.put(("stopped", k))
                return
            results.put((k, settings.prompt, settings.guidance_scale))
            time.sleep(0.03)  # "generating"
        results.put(("done", chunks))
    finally:
        channel.close()


@pytest.mark.slow
def test_changes_reach_a_producer_process_at_the_announced_chunk():
    ctx = multiprocessing.get_context("spawn")
    channel = UpdateChannel(ctx)
    results = ctx.Queue()
    mirror = LiveSettings(prompt="p0")
    controller = LiveController(channel, mirror)
    made = []

    def status():
        return {"chunks_made": len(made), **controller.status_fields()}

    proc = ctx.Process(target=_producer, args=(channel, results, 500), daemon=True)
    proc.start()
    try:
        with ControlServer("tcp://127.0.0.1:*", on_update=controller.on_update, on_status=status,
                           on_stop=controller.stop, poll_ms=20) as srv, ControlClient(srv.address, timeout=TIMEOUT) as c:
            announced = {}
            for i in range(1, 6):
                made.append(results.get(timeout=60))  # the producer is running
                announced[f"p{i}"] = c.call("set_prompt", prompt=f"p{i}")["applies_at_chunk"]
                time.sleep(0.04 * (i % 3))
            at_guidance = c.call("set_guidance", guidance_scale=2.0)["applies_at_chunk"]
            with pytest.raises(ControlError, match="field: promt"):
                c.call("set_prompt", promt="typo")

            paused_at = c.call("pause")["applies_at_chunk"]
            deadline = time.monotonic() + 10
            while len(made) < paused_at and time.monotonic() < deadline:
                made.append(results.get(timeout=10))
            time.sleep(0.3)
            assert results.empty()  # chunk `paused_at` does not start while paused
            st = c.call("status")
            assert st["paused"] is True and st["next_chunk"] == paused_at
            assert st["chunks_made"] == paused_at and st["prompt"] == "p5" and st["guidance_scale"] == 2.0
            assert c.call("resume")["applies_at_chunk"] == paused_at
            made.append(results.get(timeout=10))
            stop_at = c.call("stop")["applies_at_chunk"]
            while made[-1][0] != "stopped":
                made.append(results.get(timeout=10))
        proc.join(10)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        channel.close()

    assert made[-1] == ("stopped", stop_at)
    chunks = made[:-1]
    assert [k for k, _, _ in chunks] == list(range(len(chunks)))
    prompts = [p for _, p, _ in chunks]
    for name, at in announced.items():
        later = [a for n, a in announced.items() if n > name]
        if at not in later:  # a later prompt announced for the same chunk wins
            assert prompts[at] == name, (name, at, prompts)
        assert at == 0 or prompts[at - 1] != name
    guidance = [g for _, _, g in chunks]
    assert guidance[:at_guidance] == [30.0] * at_guidance and set(guidance[at_guidance:]) == {2.0}
