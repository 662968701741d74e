"""Live control of a real never-ending run over a real control socket (127.0.0.1, free ports).

The run is the streaming runtime with the synthetic source (the model is not the point here: frames
are a pure function of their index) in its own process, with a prompt file, a `zmq+push` sink read by
a subscriber process, a file sink and an `ffmpeg:` file sink (paced like RTMP). The test steers it
with `ControlClient`: set-prompt, malformed/unknown requests, pause/resume, status, stop.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import av
import pytest

from continuityseq_stream.control import ControlClient
from continuityseq_stream.prompts import PromptSchedule

from servers import assert_no_children, free_port

W, H, F, FPS = 64, 48, 4, 40.0
SOURCE = "continuityseq_stream.demo.synthetic_source:synthetic_stream"
PROMPTS = "a red fox\na city at night\n"
RUNNER = """
import json, sys
from continuityseq_stream.config import GenerationConfig
from continuityseq_stream.prompts import PromptSchedule
from continuityseq_stream.runtime.loop import RuntimeOptions, run
a = json.loads(sys.argv[1])
schedule = PromptSchedule.from_file(a["prompts"], interval=2)
sys.exit(run(GenerationConfig(**a["config"]), a["sinks"], RuntimeOptions(schedule=schedule, **a["options"])))
"""


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _decode_count(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _start(args: dict) -> subprocess.Popen:
    """The runtime in a child process (its own session), configured by `args` (see RUNNER)."""
    return subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _status_of(client: ControlClient):
    """The run's status answer, or None while its control socket is not bound yet."""
    try:
        return client.call("status")
    except Exception:  # noqa: BLE001
        return None


@pytest.mark.slow
def test_control_socket_steers_a_forever_run(tmp_path):
    zmq_port, control = free_port(), f"tcp://127.0.0.1:{free_port()}"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    mp4, ts = tmp_path / "out.mp4", tmp_path / "held.ts"
    args = {
        "prompts": str(prompts),
        "config": dict(prompt="unused", width=W, height=H, num_frames=F, fps=FPS, times=0),
        "sinks": [f"zmq+push://127.0.0.1:{zmq_port}", f"file:{mp4}", f"ffmpeg:{ts}#format=mpegts"],
        "options": {"source": SOURCE, "source_kwargs": {"delay": 0.02}, "status_interval": 0, "ring_frames": 16,
                    "control": control},
    }
    sub = subprocess.Popen([sys.executable, "-m", "continuityseq_stream.sinks.receiver", f"tcp://127.0.0.1:{zmq_port}",
                            "--pull", "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)
    run = _start(args)
    client = ControlClient(control, timeout=5.0)
    try:
        def status():
            return _status_of(client)

        _wait(lambda: (s := status()) and s["chunks_made"] >= 3 and s, 60, "three chunks")

        # a live prompt replaces the prompt file from the announced chunk on
        answer = client.call("set_prompt", prompt="a lighthouse in a storm")
        switch = answer["applies_at_chunk"]
        assert answer["ok"] and switch >= 3

        # bad requests get errors naming the field; the run goes on
        bad = client.request(b"{not json")
        assert bad["ok"] is False and "malformed JSON" in bad["error"]
        bad = client.request({"command": "explode"})
        assert bad["ok"] is False and bad["field"] == "command" and "known commands" in bad["error"]
        bad = client.request({"command": "set_guidance", "guidance_scale": -1})
        assert bad["ok"] is False and bad["field"] == "guidance_scale"
        _wait(lambda: status()["chunks_made"] >= switch + 2, 30, "chunks after the switch")

        # pause: no new chunk, the ffmpeg sink keeps sending the held frame
        paused_at = client.call("pause")["applies_at_chunk"]
        before = _wait(lambda: (s := status())["chunks_made"] == paused_at
                       and all(k["frames"] == s["frames_made"] for k in s["sinks"]) and s, 10,
                       "the chunk in progress to reach every sink")
        time.sleep(1.0)
        during = status()
        assert during["paused"] is True
        assert during["chunks_made"] == before["chunks_made"] == paused_at
        ff = [s for s in during["sinks"] if s["name"].startswith("ffmpeg:")][0]
        ff0 = [s for s in before["sinks"] if s["name"].startswith("ffmpeg:")][0]
        assert ff["sent"] - ff0["sent"] >= FPS * 0.5, (ff0, ff)  # the stream stayed alive
        files = {s["name"]: s["frames"] for s in during["sinks"]}
        assert files == {s["name"]: s["frames"] for s in before["sinks"]}  # no new frames reached the sinks
        client.call("resume")
        after = _wait(lambda: (s := status())["chunks_made"] > paused_at + 1 and s, 30, "chunks after resume")

        # status figures are consistent with each other
        assert F * after["chunks_made"] <= after["frames_made"] < F * (after["chunks_made"] + 1)
        assert all(s["frames"] <= after["frames_made"] and s["skipped"] == 0 for s in after["sinks"])
        assert after["prompt"] == "a lighthouse in a storm" and after["current_chunk"] >= switch
        assert after["out_fps"] == FPS and after["ring_slots"] == 16 and after["paused"] is False

        end = client.call("stop")["applies_at_chunk"]
        assert run.wait(60) == 0, run.stderr.read().decode()
        headers, err = sub.communicate(timeout=60)
    finally:
        client.close()
        for p in (run, sub):
            if p.poll() is None:
                p.kill()
                p.wait()
    headers = [json.loads(line) for line in headers.decode().splitlines()]
    assert len(headers) == end * F and [h["index"] for h in headers] == list(range(end * F))

    schedule = PromptSchedule.from_text(PROMPTS, interval=2)
    for h in headers:
        expect = "a lighthouse in a storm" if h["chunk"] >= switch else schedule.blend_at(h["chunk"]).description
        assert h["prompt"] == expect, h
    assert headers[F]["prompt"] == "a red fox (50%) + a city at night (50%)"  # chunk 1 of the file

    assert _decode_count(mp4) == end * F  # every generated frame, playable
    assert _decode_count(ts) > end * F  # plus the frames held during the pause
    assert_no_children("ffmpeg")


def test_a_taken_control_address_is_a_config_error_before_anything_runs(tmp_path):
    import zmq

    from continuityseq_stream.config import GenerationConfig
    from continuityseq_stream.errors import ConfigError
    from continuityseq_stream.runtime.loop import RuntimeOptions, run

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(ConfigError, match="^control: cannot bind"):
            run(GenerationConfig(prompt="x", width=W, height=H, num_frames=F, times=1), [f"file:{tmp_path / 'o.mp4'}"],
                RuntimeOptions(source=SOURCE, status_interval=0, control=f"tcp://127.0.0.1:{port}"))
    finally:
        sock.close(0)
        ctx.term()
    assert not (tmp_path / "o.mp4").exists()
    with pytest.raises(ConfigError, match="not a loopback address"):
        RuntimeOptions(control="tcp://0.0.0.0:5557")
    assert RuntimeOptions(control="tcp://0.0.0.0:5557", control_allow_remote=True).control == "tcp://0.0.0.0:5557"


@pytest.mark.slow
def test_status_line_says_paused_while_the_control_pause_holds_the_producer(tmp_path):
    control = f"tcp://127.0.0.1:{free_port()}"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    args = {
        "prompts": str(prompts),
        "config": dict(prompt="a fox", width=W, height=H, num_frames=F, fps=FPS, times=0),
        "sinks": [f"file:{tmp_path / 'out.mp4'}"],
        "options": {"source": SOURCE, "source_kwargs": {"delay": 0.02}, "status_interval": 0.2, "control": control},
    }
    run = _start(args)
    client = ControlClient(control, timeout=5.0)
    try:
        def status():
            return _status_of(client)

        _wait(lambda: (s := status()) and s["chunks_made"] >= 2, 60, "two chunks")
        client.call("pause")
        time.sleep(1.0)  # several status lines while paused
        client.call("resume")
        _wait(lambda: status()["paused"] is False, 10, "resume")
        time.sleep(0.6)
        client.call("stop")
        assert run.wait(60) == 0
        err = run.stderr.read().decode()
    finally:
        client.close()
        if run.poll() is None:
            run.kill()
            run.wait()
    lines = [line for line in err.splitlines() if line.lstrip().startswith("[stream ")]
    flags = [" paused |" in line for line in lines]
    assert True in flags and flags[-1] is False, lines  # shown while paused, gone after resume
