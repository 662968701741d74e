"""Issue #11, control and shared memory: hostile control requests, bounded memory, nothing in /dev/shm.

Every test that needs a run starts the real streaming runtime in its own process group (synthetic
source: the model is not the point), with a real control socket on 127.0.0.1 and a real ZeroMQ PUB
sink, and talks to it with `ControlClient` from this process. Before the fixes: a 2 KB nested request
(RecursionError) or a 400-digit guidance (OverflowError) ended the control server for the rest of the
run; a lone surrogate in a prompt crashed the producer; absurd values were accepted; updates piled up
without limit while paused; the main process kept every live prompt; `kill -9` of the group left the
run's named semaphores in /dev/shm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from continuityseq_stream.control import ControlClient, ControlError, LiveController
from continuityseq_stream.prompts import (
    MAX_BLEND_PROMPTS,
    MAX_PROMPT_CHARS,
    MAX_QUEUED_UPDATES,
    LiveSettings,
    UpdateChannel,
    UpdateError,
)

from servers import free_port

W, H, F, FPS = 32, 32, 4, 40.0
SOURCE = "continuityseq_stream.demo.synthetic_source:synthetic_stream"
RUNNER = """
import json, sys
from continuityseq_stream.config import GenerationConfig
from continuityseq_stream.runtime.loop import RuntimeOptions, run
a = json.loads(sys.argv[1])
sys.exit(run(GenerationConfig(**a["config"]), a["sinks"], RuntimeOptions(**a["options"])))
"""
TIMEOUT = 10.0  # seconds a control answer may take on a loaded machine


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class LiveRun:
    """The runtime in a child process (its own process group) with a control socket and a PUB sink."""

    def __init__(self, log: Path, delay: float = 0.02) -> None:
        self.log = log  # stderr goes to a file: one line per change would fill an unread pipe
        self.address = f"tcp://127.0.0.1:{free_port()}"
        args = {
            "config": dict(prompt="start", width=W, height=H, num_frames=F, fps=FPS, times=0),
            "sinks": [f"zmq+pub://127.0.0.1:{free_port()}"],
            "options": {"source": SOURCE, "source_kwargs": {"delay": delay}, "status_interval": 0,
                        "ring_frames": 8, "control": self.address},
        }
        with open(log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(args)], stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)
        self.client = ControlClient(self.address, timeout=TIMEOUT)
        _wait(lambda: (s := self.status_or_none()) and s["chunks_made"] >= 2, 120, "the run's first chunks")

    def status_or_none(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"the run ended (status {self.proc.returncode}): {self.stderr()}")
        try:
            return self.client.call("status")
        except ControlError:
            return None

    def status(self) -> dict:
        return self.client.call("status")

    def chunks_go_on(self) -> None:
        """The producer still makes chunks (the run was not harmed)."""
        made = self.status()["chunks_made"]
        _wait(lambda: self.status()["chunks_made"] >= made + 2, 60, "two more chunks")

    def processes(self) -> list[psutil.Process]:
        """Every process of the run's process group (runtime, producer, resource tracker)."""
        group = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.proc.pid:
                    group.append(p)
            except (ProcessLookupError, psutil.Error):
                pass
        return group

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        self.client.call("stop")
        return self.proc.wait(60)

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    run = LiveRun(tmp_path_factory.mktemp("live") / "run.log")
    try:
        yield run
    finally:
        run.close()


# ------------------------------------------------------------------------------------------------
# hostile requests to a real run
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_deeply_nested_request_is_answered_and_the_server_keeps_serving(live):
    for payload in (b"[" * 1000 + b"]" * 1000, b'{"a":' * 1000 + b"1" + b"}" * 1000):
        answer = live.client.request(payload)
        assert answer == {"ok": False, "error": 'malformed JSON: nested too deeply; send an object like '
                                                '{"command": "status"}', "field": None}
    assert live.client.call("set_guidance", guidance_scale=7.0)["ok"]
    live.chunks_go_on()


@pytest.mark.slow
def test_non_finite_and_absurd_values_are_rejected_naming_the_field(live):
    before = live.status()
    cases = [
        (b'{"command": "set_guidance", "guidance_scale": NaN}', "guidance_scale"),
        (b'{"command": "set_guidance", "guidance_scale": Infinity}', "guidance_scale"),
        (b'{"command": "set_guidance", "guidance_scale": 1e308}', "guidance_scale"),
        (b'{"command": "set_guidance", "guidance_scale": 1' + b"0" * 400 + b"}", "guidance_scale"),  # OverflowError
        (b'{"command": "set_seed", "seed": 1' + b"0" * 30 + b"}", "seed"),
        (b'{"command": "set_seed", "seed": -1}', "seed"),
        (b'{"command": "set_prompt", "prompt": "x", "transition": 1' + b"0" * 20 + b"}", "transition"),
        (b'{"command": "set_conditioning", "min": 1, "max": 1' + b"0" * 20 + b"}", "max"),
        (b'{"command": "set_conditioning", "min": 1' + b"0" * 20 + b', "max": 1' + b"0" * 20 + b"}", "min"),
    ]
    for payload, field in cases:
        answer = live.client.request(payload)
        assert answer["ok"] is False and answer["field"] == field, (payload[:60], answer)
        assert len(answer["error"]) < 300, answer  # one short line, whatever was sent
    after = live.status()
    assert after["guidance_scale"] == before["guidance_scale"] and after["seed"] == before["seed"]
    assert after["conditioning"] == before["conditioning"]
    live.chunks_go_on()


@pytest.mark.slow
def test_a_lone_surrogate_prompt_is_rejected_instead_of_crashing_the_producer(live):
    answer = live.client.request(b'{"command": "set_prompt", "prompt": "fox \\ud800 at night"}')
    assert answer["ok"] is False and answer["field"] == "prompt" and "lone surrogate" in answer["error"]
    answer = live.client.request(b'{"command": "set_negative_prompt", "negative_prompt": "\\udfff"}')
    assert answer["ok"] is False and answer["field"] == "negative_prompt"
    live.chunks_go_on()


@pytest.mark.slow
def test_prompt_and_request_size_limits_get_answers(live):
    at_cap = "a" * MAX_PROMPT_CHARS
    answer = live.client.call("set_prompt", prompt=at_cap)
    _wait(lambda: live.status()["current_chunk"] >= answer["applies_at_chunk"], 60, "the long prompt's chunk")
    assert live.status()["prompt"] == at_cap
    answer = live.client.request({"command": "set_prompt", "prompt": "b" * (MAX_PROMPT_CHARS + 1)})
    assert answer["ok"] is False and answer["field"] == "prompt" and f"at most {MAX_PROMPT_CHARS}" in answer["error"]
    answer = live.client.request({"command": "set_prompt", "prompt": "c" * 60_000})  # the 60 KB prompts
    assert answer["ok"] is False and answer["field"] == "prompt"
    answer = live.client.request({"command": "set_prompt", "prompt": "d" * 100_000})  # over the 64 KiB request cap
    assert answer["ok"] is False and "at most 65536" in answer["error"]
    with ControlClient(live.address, timeout=2.0) as other, pytest.raises(ControlError, match="no answer"):
        other.request(b"x" * (2 * 2**20))  # over 1 MiB: dropped unread, as documented
    assert live.status()["prompt"] == at_cap  # none of it reached the run
    live.chunks_go_on()


@pytest.mark.slow
def test_changes_queued_while_paused_are_capped(live):
    paused_at = live.client.call("pause")["applies_at_chunk"]
    answers = [live.client.request({"command": "set_prompt", "prompt": f"queued {i}"})
               for i in range(MAX_QUEUED_UPDATES + 8)]
    accepted = [a for a in answers if a["ok"]]
    refused = [a for a in answers if not a["ok"]]
    assert len(accepted) == MAX_QUEUED_UPDATES and all(a["applies_at_chunk"] == paused_at for a in accepted)
    assert len(refused) == 8 and all("resume first" in a["error"] and a["field"] is None for a in refused)
    assert live.status()["queued_updates"] == MAX_QUEUED_UPDATES
    live.client.call("resume")
    _wait(lambda: (s := live.status())["current_chunk"] >= paused_at and s["queued_updates"] == 0, 60,
          "the queued chunk")
    assert live.status()["prompt"] == f"queued {MAX_QUEUED_UPDATES - 1}"  # the last accepted change wins
    live.chunks_go_on()


@pytest.mark.slow
def test_the_run_survives_all_of_it_and_ends_cleanly(live):
    assert live.stop() == 0, live.stderr()
    err = live.stderr()
    assert "Traceback" not in err and "producer failed" not in err, err


# ------------------------------------------------------------------------------------------------
# memory under 10,000 control commands
# ------------------------------------------------------------------------------------------------
def _commands(n: int, start: int):
    """A mix of every command, with unique prompts at the length cap and the issue's 60 KB prompts."""
    for i in range(start, start + n):
        kind = i % 10
        text = f"{i:08d} " + "x" * (MAX_PROMPT_CHARS - 9)
        if kind in (0, 1, 2):
            yield {"command": "set_prompt", "prompt": text, "transition": i % 5}
        elif kind == 3:
            yield {"command": "set_prompt", "prompt": f"{i} " + "y" * 60_000}  # refused: longer than the cap
        elif kind == 4:
            yield {"command": "set_negative_prompt", "negative_prompt": text}
        elif kind == 5:
            yield {"command": "set_guidance", "guidance_scale": float(i % 30)}
        elif kind == 6:
            yield {"command": "set_seed", "seed": i}
        elif kind == 7:
            yield {"command": "set_conditioning", "min": 1, "max": 1 + i % 4}
        else:
            yield {"command": "status"}


def _rss(run: LiveRun) -> tuple[int, int]:
    """(runtime process, producer process) resident set sizes."""
    main = psutil.Process(run.proc.pid)
    children = [c for c in main.children() if "resource_tracker" not in " ".join(c.cmdline())]
    assert len(children) == 1, children
    return main.memory_info().rss, children[0].memory_info().rss


def _send(run: LiveRun, commands) -> dict:
    counts = {"ok": 0, "refused": 0}
    for message in commands:
        answer = run.client.request(message)  # raises ControlError if the server stopped answering
        counts["ok" if answer["ok"] else "refused"] += 1
    return counts


@pytest.mark.slow
def test_memory_stays_flat_under_10000_control_commands(tmp_path):
    run = LiveRun(tmp_path / "run.log")
    try:
        _send(run, _commands(2000, 0))  # warm-up: pools, caches, allocator arenas
        before = _rss(run)
        t0 = time.monotonic()
        counts = _send(run, _commands(10_000, 2000))
        seconds = time.monotonic() - t0
        after = _rss(run)
        status = run.status()
        assert run.stop() == 0, run.stderr()
    finally:
        run.close()
    print(f"10,000 commands in {seconds:.1f} s ({counts}); RSS runtime {before[0] / 2**20:.1f} -> "
          f"{after[0] / 2**20:.1f} MiB, producer {before[1] / 2**20:.1f} -> {after[1] / 2**20:.1f} MiB")
    assert counts["ok"] >= 2500 and counts["refused"] >= 1000, counts  # the 60 KB prompts (and more) refused
    assert status["ok"] and status["chunks_made"] > 0
    growth = [a - b for a, b in zip(after, before)]
    assert growth[0] < 8 * 2**20 and growth[1] < 8 * 2**20, (before, after)


def test_the_status_mirror_forgets_old_chunks():
    """The main process's copy of the live settings stays small (it kept every prompt before)."""
    channel = UpdateChannel(capacity=8)
    controller = LiveController(channel, LiveSettings(prompt="start"))
    producer = LiveSettings(prompt="start")
    try:
        for chunk in range(2000):
            for j in range(3):
                controller.on_update({"command": "set_prompt", "prompt": f"{chunk}-{j} " + "z" * 900,
                                      "transition": j * 4})
            controller.on_update({"command": "set_negative_prompt", "negative_prompt": f"n{chunk}"})
            controller.on_update({"command": "set_guidance", "guidance_scale": 1.0 + chunk % 7})
            settings = producer.next_chunk(chunk, channel=channel)
            mirrored = controller.status_fields(chunk)
            assert mirrored["prompt"] == settings.prompt and mirrored["guidance_scale"] == settings.guidance_scale
        mirror = controller.mirror
        assert len(mirror._overrides) <= 12 and len(mirror._negatives) <= 2 and len(mirror._guidance) <= 2
        assert len(producer._overrides) <= 12
    finally:
        channel.close()


def test_the_update_mailbox_refuses_more_than_its_capacity():
    channel = UpdateChannel(capacity=3)
    try:
        assert [channel.submit({"command": "set_seed", "seed": s}) for s in range(3)] == [0, 0, 0]
        with pytest.raises(UpdateError, match="3 changes already wait for chunk 0 \\(at most 3\\)"):
            channel.submit({"command": "set_seed", "seed": 9})
        assert channel.state()["queued_updates"] == 3
        assert [u["seed"] for u in channel.begin_chunk(0)] == [0, 1, 2]
        big = "\u00e9\u4e2d\U0001f600\x01" * (MAX_PROMPT_CHARS // 4)  # 2-4 byte characters and a \u escape
        assert channel.submit({"command": "set_prompt", "prompt": big, "negative_prompt": big}) == 1
        assert channel.begin_chunk(1) == [{"command": "set_prompt", "prompt": big.strip(), "negative_prompt": big.strip()}]
    finally:
        channel.close()


def test_fading_prompts_blending_at_once_are_capped():
    """Each prompt of a blend is encoded for every chunk: at most MAX_BLEND_PROMPTS fade in at once."""
    channel = UpdateChannel()
    controller = LiveController(channel, LiveSettings(prompt="start"))
    producer = LiveSettings(prompt="start")
    try:
        answers = []
        for i in range(MAX_BLEND_PROMPTS + 4):
            try:
                answers.append(controller.on_update({"command": "set_prompt", "prompt": f"p{i}", "transition": 100}))
            except UpdateError as exc:
                answers.append(exc)
            producer.next_chunk(i, channel=channel)
        refused = [a for a in answers if isinstance(a, UpdateError)]
        assert len(refused) == 4 and all(a.field == "transition" and "transition 0" in str(a) for a in refused)
        blend = producer.settings_for_chunk(MAX_BLEND_PROMPTS + 3).blend
        assert len(blend.terms) == MAX_BLEND_PROMPTS + 1  # the start prompt fading out, and the live ones
        assert controller.on_update({"command": "set_prompt", "prompt": "now"})["applies_at_chunk"] == MAX_BLEND_PROMPTS + 4
        producer.next_chunk(MAX_BLEND_PROMPTS + 4, channel=channel)
        assert producer.settings_for_chunk(MAX_BLEND_PROMPTS + 4).prompt == "now"
        assert controller.mirror.live_prompts(MAX_BLEND_PROMPTS + 4) == 1
        assert controller.on_update({"command": "set_prompt", "prompt": "fade", "transition": 4})["applies_at_chunk"]
    finally:
        channel.close()


def test_long_transitions_one_after_the_other_stay_bounded_and_blend_the_same():
    """Overrides whose weight fell below the blend's threshold are dropped; the blends do not change.
    (20 changes a chunk, each fading in over 1,000 chunks: none completes during the test.)"""
    pruned, full = LiveSettings(prompt="p"), LiveSettings(prompt="p")
    for chunk in range(120):
        for j in range(20):
            update = {"command": "set_prompt", "prompt": f"{chunk}-{j}", "transition": 1000}
            pruned.apply(update, chunk)
            full.apply(update, chunk)
        if chunk in (30, 119):
            blend = pruned.settings_for_chunk(chunk).blend
            assert blend == full.settings_for_chunk(chunk).blend and len(blend.terms) > 600
        pruned.forget_before(chunk)
    assert len(full._overrides) == 2400 and len(pruned._overrides) < 1100, len(pruned._overrides)


# ------------------------------------------------------------------------------------------------
# kill -9 of everything
# ------------------------------------------------------------------------------------------------
def _shm_mappings(processes) -> set[str]:
    """Names under /dev/shm that the processes have mapped (` (deleted)` when already unlinked)."""
    names = set()
    for p in processes:
        try:
            maps = Path(f"/proc/{p.pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            path = line.split(None, 5)[5] if len(line.split(None, 5)) == 6 else ""
            if path.startswith("/dev/shm/"):
                names.add(path[len("/dev/shm/"):])
    return names


@pytest.mark.slow
def test_kill_9_of_the_process_group_leaves_nothing_in_dev_shm(tmp_path):
    before = set(os.listdir("/dev/shm"))
    run = LiveRun(tmp_path / "run.log")
    try:
        run.client.call("set_prompt", prompt="a lighthouse", transition=3)
        run.chunks_go_on()
        processes = run.processes()
        mapped = _shm_mappings(processes)
        assert len(processes) >= 2
        assert any(n.startswith(f"csq_{run.proc.pid}_") for n in mapped), mapped  # we see the ring segment
        os.killpg(run.proc.pid, signal.SIGKILL)
        gone, alive = psutil.wait_procs(processes, timeout=10)
        assert not alive, alive
    finally:
        run.close()
    left = set(os.listdir("/dev/shm"))
    kept = sorted(n for n in (m.removesuffix(" (deleted)") for m in mapped) if n in left)
    assert kept == [], f"left in /dev/shm after kill -9: {kept} (mapped by the run: {sorted(mapped)})"
    assert not [n for n in left - before if n.startswith(f"csq_{run.proc.pid}_")]


def test_the_runtime_primitives_create_no_named_semaphores():
    """A ring, a producer handle and an update channel map no `sem.*` file (there were 11 + readers)."""
    import multiprocessing

    from continuityseq_stream.config import GenerationConfig
    from continuityseq_stream.runtime.producer import Producer
    from continuityseq_stream.runtime.ringbuffer import FrameRing

    def sems() -> set[str]:
        return {n for n in _shm_mappings([psutil.Process()]) if n.startswith("sem.")}

    before = sems()
    ctx = multiprocessing.get_context("spawn")
    ring = FrameRing(8, max_readers=2, ctx=ctx)
    channel = UpdateChannel(ctx)
    producer = Producer(GenerationConfig(prompt="x", width=W, height=H), ring, source=SOURCE, ctx=ctx, channel=channel)
    try:
        assert sems() - before == set()
    finally:
        producer.shutdown(0)
        channel.close()
        ring.destroy()


def test_the_runs_own_config_is_not_held_to_the_live_limits():
    """-p / -g / -CX are the user's own choice, checked at start-up; only live clients meet the limits."""
    live = LiveSettings(prompt="p" * 5000, guidance_scale=150.0, min_conditioning_frames=1, max_conditioning_frames=2000)
    assert live.settings_for_chunk(0).guidance_scale == 150.0 and live.conditioning_range == (1, 2000)
    for update, field in (({"command": "set_prompt", "prompt": "p" * 5000}, "prompt"),
                          ({"command": "set_guidance", "guidance_scale": 150.0}, "guidance_scale"),
                          ({"command": "set_conditioning", "min": 1, "max": 2000}, "max")):
        with pytest.raises(UpdateError) as info:
            live.apply(update, 1)
        assert info.value.field == field
    with pytest.raises(UpdateError, match="lone surrogate"):  # never valid: it would crash the producer
        LiveSettings(prompt="fox \ud800")
