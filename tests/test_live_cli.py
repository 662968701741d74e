"""`--prompts-file` and `--control` on the CLI with the tiny demo model, and the `control` subcommand.

The run is `continuityseq-stream --times 0` in its own process with a zmq+push sink (read by a
subscriber process) and a file sink; it is steered with `continuityseq-stream control ...`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import av
import pytest

from continuityseq_stream.control import ControlClient

from servers import free_port

W, H, F = 64, 48, 4
BASE = ["--model", "demo-random", "--model-2d", "demo", "-T", str(F), "-WI", str(W), "-HI", str(H), "-s", "2", "-r", "7",
        "-f", "8"]
PROMPTS = ["a red fox", "a city at night", "an ocean reef"]


def _env(tmp_path):
    return dict(os.environ, HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path.parent / "xdg-cache-runtime"))


def cli(*args, tmp_path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "continuityseq_stream.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(tmp_path), start_new_session=True, **kw)


def cli_run(*args, tmp_path, timeout=60):
    proc = cli(*args, tmp_path=tmp_path)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
def test_prompts_file_and_control_socket_on_the_demo_model(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# three prompts, one chunk each\n" + "\n".join(PROMPTS) + "\n")
    zmq_port, control = free_port(), f"tcp://127.0.0.1:{free_port()}"
    mp4 = tmp_path / "out.mp4"
    sub = subprocess.Popen([sys.executable, "-m", "continuityseq_stream.sinks.receiver", f"tcp://127.0.0.1:{zmq_port}",
                            "--pull", "--timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)
    # no -p: the prompt file gives the prompts
    run = cli(*BASE, "--times", "0", "--prompts-file", str(prompts), "--prompts-interval", "1",
              "--control", control, "--sink", f"zmq+push://127.0.0.1:{zmq_port}", "--sink", f"file:{mp4}",
              "-o", str(tmp_path), tmp_path=tmp_path)
    client = ControlClient(control, timeout=5.0)
    try:
        deadline = time.monotonic() + 120
        while True:  # the socket answers while the model loads; wait for the first chunk
            assert time.monotonic() < deadline and run.poll() is None, run.stderr.read().decode()
            try:
                if client.call("status")["chunks_made"] >= 1:
                    break
            except Exception:  # noqa: BLE001 - not bound yet
                pass
            time.sleep(0.2)

        code, out, err = cli_run("control", "--address", control, "set-prompt", "a lighthouse in a storm",
                                 tmp_path=tmp_path)
        assert code == 0, err
        answer = json.loads(out)
        switch = answer["applies_at_chunk"]
        assert answer["ok"] and answer["command"] == "set_prompt" and switch >= 1

        code, out, err = cli_run("control", "--address", control, "send", '{"command": "nope"}', tmp_path=tmp_path)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "unknown command" in err

        deadline = time.monotonic() + 120
        while client.call("status")["chunks_made"] < switch + 1:
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.2)
        status = client.call("status")
        assert status["prompt"] == "a lighthouse in a storm" and status["scheduled"] == []

        code, out, err = cli_run("control", "--address", control, "stop", tmp_path=tmp_path)
        assert code == 0, err
        end = json.loads(out)["applies_at_chunk"]
        assert run.wait(120) == 0, run.stderr.read().decode()
        headers, _ = sub.communicate(timeout=60)
    finally:
        client.close()
        for p in (run, sub):
            if p.poll() is None:
                p.kill()
                p.wait()
    headers = [json.loads(line) for line in headers.decode().splitlines()]
    assert len(headers) == end * F
    for h in headers:
        expect = "a lighthouse in a storm" if h["chunk"] >= switch else PROMPTS[min(h["chunk"], 2)]
        assert h["prompt"] == expect, h
    with av.open(str(mp4)) as c:
        assert sum(1 for _ in c.decode(video=0)) == end * F


@pytest.mark.slow
@pytest.mark.parametrize("args, fragment", [
    (["--prompts-file", "{tmp}/missing.txt"], "--prompts-file: cannot read"),
    (["--prompts-file", "{tmp}/bad.txt"], "bad.txt:2: this line has no time stamp"),
    (["--times", "1"], "-p/--prompt: missing"),
    (["-p", "x", "--loop-prompts"], "--loop-prompts: needs --prompts-file"),
    (["-p", "x", "--control", "tcp://0.0.0.0:5557"], "not a loopback address"),
])
def test_bad_prompt_and_control_flags_are_one_line_and_status_2(tmp_path, args, fragment):
    (tmp_path / "bad.txt").write_text("00:00 dawn\nnoon\n")
    code, out, err = cli_run(*BASE, *[a.format(tmp=tmp_path) for a in args], "-o", str(tmp_path), tmp_path=tmp_path)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert not list(tmp_path.glob("*.mp4"))
