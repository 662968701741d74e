"""ZeroMQ sinks with receivers in other processes: PUSH is lossless and ordered, PUB never slows the writer."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from continuityseq_stream.chunk import FrameMeta
from continuityseq_stream.errors import ConfigError, SinkError
from continuityseq_stream.sinks import sink_from_uri
from continuityseq_stream.sinks.base import StreamInfo
from continuityseq_stream.sinks.zeromq import ZmqPubSink, ZmqPushSink
from continuityseq_stream.sinks.receiver import Subscriber, normalize_endpoint, subscribe

W, H, FPS = 32, 24, 8.0


def _frame(i: int) -> np.ndarray:
    f = np.zeros((H, W, 3), np.uint8)
    f[..., 0] = i % 256
    f[..., 1] = (7 * i) % 256
    f[: H // 2, : W // 2, 2] = 255
    return f


def _meta(i: int) -> FrameMeta:
    return FrameMeta(index=i, chunk=i // 4, pts=i / FPS, prompt=f"prompt {i // 4}")


def _subscriber_proc(endpoint: str, *args: str) -> subprocess.Popen:
    """`python -m continuityseq_stream.sinks.receiver ENDPOINT ...` (the subscribe command) in another process."""
    return subprocess.Popen(["timeout", "-s", "KILL", "60", sys.executable, "-m", "continuityseq_stream.sinks.receiver",
                             endpoint, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_uri_parsing_is_strict():
    sink = sink_from_uri("zmq+push://:5999")
    assert isinstance(sink, ZmqPushSink) and sink.policy == "block"
    assert sink.address.endpoint == "tcp://127.0.0.1:5999" and not sink.address.connect
    pub = sink_from_uri("zmq+pub://127.0.0.1:0?hwm=2&nodrop=0&connect=0")
    assert isinstance(pub, ZmqPubSink) and pub.policy == "latest" and pub.address.hwm == 2
    with pytest.raises(ConfigError, match="bogus"):
        sink_from_uri("zmq+pub://127.0.0.1:5555?bogus=1")
    with pytest.raises(ConfigError, match="timeout"):  # PUSH-only option on PUB
        sink_from_uri("zmq+pub://127.0.0.1:5555?timeout=1")
    with pytest.raises(ConfigError, match="port"):
        sink_from_uri("zmq+push://127.0.0.1")
    with pytest.raises(ConfigError, match="port"):
        sink_from_uri("zmq+push://127.0.0.1:http")
    with pytest.raises(ConfigError, match="hwm"):
        sink_from_uri("zmq+push://127.0.0.1:5555?hwm=0")
    assert normalize_endpoint("zmq+push://:5555?hwm=3") == ("tcp://127.0.0.1:5555", True)
    assert normalize_endpoint("127.0.0.1:5555") == ("tcp://127.0.0.1:5555", None)


def test_bind_conflict_is_a_sink_error():
    first = sink_from_uri("zmq+push://127.0.0.1:0?linger=0.2")
    first.open(StreamInfo(W, H, FPS))
    try:
        second = sink_from_uri(f"zmq+push://{first.endpoint[len('tcp://'):]}")
        with pytest.raises(SinkError, match="cannot bind"):
            second.open(StreamInfo(W, H, FPS))
        second.close()
    finally:
        first.close()


@pytest.mark.slow
def test_push_delivers_every_frame_in_order_to_another_process():
    n = 40
    sink = sink_from_uri("zmq+push://127.0.0.1:0")
    with sink:
        sink.open(StreamInfo(W, H, FPS))
        proc = _subscriber_proc(sink.endpoint.replace("tcp://", "zmq+push://"), "--timeout", "20")
        for i in range(n):  # the first send waits until the subscriber has connected
            sink.write(_frame(i), _meta(i))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [h["index"] for h in lines] == list(range(n))
    for i, h in enumerate(lines):
        assert h["chunk"] == i // 4 and h["pts"] == pytest.approx(i / FPS) and h["fps"] == FPS
        assert h["shape"] == [H, W, 3] and h["dtype"] == "uint8" and h["format"] == "rgb24"
        assert h["prompt"] == f"prompt {i // 4}"
        assert h["mean"] == pytest.approx(_frame(i).reshape(-1, 3).mean(0).tolist(), abs=0.05)
    assert f"{n} frames, 0 missed, end-of-stream" in err
    assert sink.stats() == {"sent": n, "dropped": 0}


def test_subscribe_helper_receives_pixels_then_eos():
    """The three-line API, in this process (the sink writes from a thread)."""
    import threading

    sink = sink_from_uri("zmq+push://127.0.0.1:0")
    sink.open(StreamInfo(W, H, FPS))

    def produce():
        with sink:
            for i in range(10):
                sink.write(_frame(i), _meta(i))

    t = threading.Thread(target=produce)
    t.start()
    got = [(frame.copy(), header) for frame, header in subscribe(sink.endpoint, pull=True, timeout=10)]
    t.join(10)
    assert len(got) == 10
    for i, (frame, header) in enumerate(got):
        assert header["index"] == i
        np.testing.assert_array_equal(frame, _frame(i))


@pytest.mark.slow
def test_pub_with_slow_subscriber_does_not_slow_the_writer():
    n = 200
    big = np.full((240, 320, 3), 99, np.uint8)  # large frames, so kernel socket buffers fill quickly
    sink = sink_from_uri("zmq+pub://127.0.0.1:0?hwm=2")
    sink.open(StreamInfo(320, 240, FPS))
    code = (
        "import sys, time, json\n"
        "from continuityseq_stream.sinks.receiver import Subscriber\n"
        "with Subscriber(sys.argv[1], timeout=15, hwm=2) as sub:\n"
        "    print('ready', flush=True)\n"
        "    for frame, header in sub:\n"
        "        time.sleep(0.05)\n"
        "    print(json.dumps({'received': sub.received, 'missed': sub.missed, 'eos': sub.eos}), flush=True)\n"
    )
    proc = subprocess.Popen(["timeout", "-s", "KILL", "60", sys.executable, "-c", code, sink.endpoint],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # let the subscription reach the publisher
        slowest = 0.0
        start = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            sink.write(big, _meta(i))
            slowest = max(slowest, time.perf_counter() - t)
            time.sleep(0.002)
        elapsed = time.perf_counter() - start
    finally:
        sink.close()
    out, err = proc.communicate(timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    # a subscriber taking 50 ms per frame would need 10 s for all of them; the writer needed well under 2 s
    assert elapsed < 2.0 and slowest < 0.2, (elapsed, slowest)
    stats = sink.stats()
    assert stats["dropped"] > 0 and stats["sent"] + stats["dropped"] == n
    assert 0 < result["received"] < n
    assert result["received"] <= stats["sent"]


def test_push_close_while_blocked_returns_promptly():
    """No receiver: write() blocks (back-pressure) but close() from another thread ends it."""
    import threading

    sink = sink_from_uri("zmq+push://127.0.0.1:0?hwm=1&linger=0.2")
    sink.open(StreamInfo(W, H, FPS))
    done = threading.Event()

    def writer():
        for i in range(5):
            sink.write(_frame(i), _meta(i))
        done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    assert not done.wait(0.5)  # blocked: nobody receives
    start = time.monotonic()
    sink.close()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - start < 3.0


def test_push_timeout_option_raises_sink_error():
    sink = sink_from_uri("zmq+push://127.0.0.1:0?hwm=1&timeout=0.3&linger=0")
    with sink:
        sink.open(StreamInfo(W, H, FPS))
        with pytest.raises(SinkError, match="no receiver"):
            for i in range(5):
                sink.write(_frame(i), _meta(i))


def test_subscriber_timeout():
    with Subscriber("tcp://127.0.0.1:1", timeout=0.2) as sub:
        with pytest.raises(TimeoutError, match="within 0.2 s"):
            sub.recv()


def test_connect_mode_with_binding_receiver():
    with Subscriber("tcp://127.0.0.1:*", pull=True, bind=True, timeout=10) as sub:
        port = sub.endpoint.rsplit(":", 1)[1]
        sink = sink_from_uri(f"zmq+push://127.0.0.1:{port}?connect=1")
        with sink:
            sink.open(StreamInfo(W, H, FPS))
            for i in range(3):
                sink.write(_frame(i), _meta(i))
        assert [h["index"] for _, h in sub] == [0, 1, 2]
        assert sub.eos == {"eos": True, "frames": 3}
