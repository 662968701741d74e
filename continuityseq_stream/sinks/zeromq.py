"""Frames to other programs over ZeroMQ: `zmq+pub://HOST:PORT` (lossy) and `zmq+push://HOST:PORT` (lossless).

Each frame is a two-part message `[JSON header, raw bytes]`; the header carries `index`, `chunk`,
`pts`, `fps`, `shape`, `dtype`, `format` ("rgb24") and `prompt`. When the sink closes it sends
`[{"eos": true, "frames": N}, b""]`. `continuityseq_stream.sinks.receiver.subscribe` is the matching receiver.

- PUB (`policy = "latest"`): small send high-water mark and non-blocking sends, so a slow subscriber
  never slows the run. With `nodrop=1` (the default) a full subscriber queue makes the send fail and
  the frame is counted in `stats()["dropped"]`; note that with several subscribers that frame is then
  dropped for all of them. `nodrop=0` lets each subscriber drop on its own (ZeroMQ's default): fast
  subscribers see every frame, and the sender cannot count what the slow one missed (receivers see gaps
  in `index`).
- PUSH (`policy = "block"`): a blocking send (polled in short steps so that `close()` is honoured),
  which is real back-pressure: with no receiver connected, or a slow one, the run waits.

The socket binds by default; `?connect=1` connects to a receiver that binds instead. HOST defaults to
127.0.0.1 when empty (`zmq+pub://:5555`); port `0` or `*` picks a free port (see `endpoint` after
`open`). Binding anything but a loopback address (`*`, `0.0.0.0`, a LAN address) would let anyone who
reaches the machine read the frames, so it needs `allow_remote=1` (like `--control-allow-remote`).
Options (strict): connect=0|1, hwm=N, linger=SECONDS, allow_remote=0|1, nodrop=0|1 (PUB),
timeout=SECONDS (PUSH: raise SinkError when a frame cannot be sent for that long; default: wait, within
the runtime's --sink-timeout).
"""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import parse_qsl

import numpy as np
import zmq

from ..chunk import FrameMeta
from ..config import is_loopback_host
from ..errors import SinkError
from .options import parse_bool, parse_number, sink_error
from .base import Sink, StreamInfo

__all__ = ["ZmqAddress", "ZmqPubSink", "ZmqPushSink", "frame_header", "from_uri", "is_loopback_host"]

_COMMON = ("connect", "hwm", "linger", "allow_remote")
_OPTIONS = {"pub": _COMMON + ("nodrop",), "push": _COMMON + ("timeout",)}


class ZmqAddress:
    """A parsed `zmq+pub://` / `zmq+push://` URI: kind, tcp endpoint, bind or connect, options."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme not in ("zmq+pub", "zmq+push"):
            raise sink_error(uri, "use zmq+pub://HOST:PORT or zmq+push://HOST:PORT")
        self.kind = scheme.split("+", 1)[1]
        hostport, _, query = rest.partition("?")
        hostport = hostport.rstrip("/")
        host, colon, port = hostport.rpartition(":")
        if not colon:
            raise sink_error(uri, f"no port; use e.g. {scheme}://127.0.0.1:5555")
        host = host or "127.0.0.1"
        if port in ("0", "*"):
            port = "*"
        elif not port.isdigit() or not 0 < int(port) < 65536:
            raise sink_error(uri, f"port {port!r} is not a number in 1..65535 (or 0 for a free port)")
        pairs = parse_qsl(query, keep_blank_values=True)
        allowed = _OPTIONS[self.kind]
        unknown = sorted({k for k, _ in pairs if k not in allowed})
        if unknown:
            raise sink_error(uri, f"unknown option(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
        opts = dict(pairs)
        self.connect = parse_bool(uri, "connect", opts.get("connect", "0"))
        if self.connect and (port == "*" or host == "*"):
            raise sink_error(uri, "connect=1 needs an explicit host and port")
        self.allow_remote = parse_bool(uri, "allow_remote", opts.get("allow_remote", "0"))
        if not self.connect and not self.allow_remote and not is_loopback_host(host):
            raise sink_error(uri, f"binding {host!r} is not loopback-only, so anyone who can reach this machine "
                                  f"could read the frames; use {scheme}://127.0.0.1:{port.replace('*', '0')}, or add "
                                  "?allow_remote=1 to accept it")
        self.endpoint = f"tcp://{host}:{port}"
        self.hwm = parse_number(uri, "hwm", opts.get("hwm", "4" if self.kind == "pub" else "16"), int, 1, 100_000)
        self.linger = parse_number(uri, "linger", opts.get("linger", "0.5" if self.kind == "pub" else "5"), float, 0, 600)
        self.nodrop = parse_bool(uri, "nodrop", opts.get("nodrop", "1"))
        self.timeout = parse_number(uri, "timeout", opts["timeout"], float, 0.01, 1e9) if "timeout" in opts else None


def frame_header(meta: FrameMeta, fps: float, shape: tuple) -> bytes:
    """The JSON header of one frame message."""
    return json.dumps({"index": meta.index, "chunk": meta.chunk, "pts": meta.pts, "fps": fps,
                       "shape": list(shape), "dtype": "uint8", "format": "rgb24",
                       "prompt": meta.prompt}).encode()


class _ZmqSink(Sink):
    """Socket lifetime shared by PUB and PUSH: own context, bind/connect in open, bounded linger,
    end-of-stream on close, socket closed before the context is terminated (else term() hangs).

    write() and close() may come from different threads; `_lock` keeps the socket on one at a time,
    and `_closing` makes a blocked write() give up so close() can proceed.
    """

    socket_type: int

    def __init__(self, address: ZmqAddress, name: str | None = None) -> None:
        super().__init__(name or address.uri)
        self.address = address
        self.endpoint: str | None = None
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._interrupted = False
        self._sent = 0
        self._dropped = 0

    def stats(self) -> dict:
        return {"sent": self._sent, "dropped": self._dropped}

    def _configure(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.SNDHWM, self.address.hwm)
        sock.setsockopt(zmq.LINGER, int(self.address.linger * 1000))

    def _open(self, info: StreamInfo) -> None:
        self._ctx = zmq.Context()
        sock = self._ctx.socket(self.socket_type)
        try:
            self._configure(sock)
            if self.address.connect:
                sock.connect(self.address.endpoint)
            else:
                sock.bind(self.address.endpoint)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT) or self.address.endpoint
        except zmq.ZMQError as exc:
            sock.close(0)
            self._ctx.term()
            self._ctx = None
            verb = "connect to" if self.address.connect else "bind"
            raise SinkError(f"sink {self.name}: cannot {verb} {self.address.endpoint}: {exc}; "
                            "use a free port or another host") from exc
        self._sock = sock

    def _write(self, frame: np.ndarray, meta: FrameMeta) -> None:
        header = frame_header(meta, self.info.fps, frame.shape)
        with self._lock:
            if self._sock is None:
                raise SinkError(f"sink {self.name}: write after close")
            self._send([header, np.ascontiguousarray(frame)])

    def _send(self, parts: list) -> None:
        raise NotImplementedError

    def interrupt(self) -> None:
        """Detached by the runtime: a blocked PUSH send gives up, and close() does not linger for a
        receiver that stopped reading."""
        self._interrupted = True
        self._closing.set()

    def _close(self) -> None:
        self._closing.set()
        with self._lock:
            sock, ctx = self._sock, self._ctx
            self._sock = self._ctx = None
            if sock is None:
                return
            try:
                if self._interrupted:
                    sock.setsockopt(zmq.LINGER, 0)
                else:
                    self._send_eos(sock)
            finally:
                sock.close()  # waits up to LINGER for queued frames, in ctx.term()
                ctx.term()

    def _send_eos(self, sock: zmq.Socket) -> None:
        """Best effort within the linger time: the receivers' timeout covers a lost EOS."""
        eos = [json.dumps({"eos": True, "frames": self.frames_written}).encode(), b""]
        deadline = time.monotonic() + max(0.05, self.address.linger)
        while True:
            try:
                sock.send_multipart(eos, flags=zmq.NOBLOCK)
                return
            except zmq.Again:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.01)


class ZmqPubSink(_ZmqSink):
    """Lossy broadcast: never waits; frames a subscriber cannot take are dropped."""

    policy = "latest"
    socket_type = zmq.PUB

    def _configure(self, sock: zmq.Socket) -> None:
        super()._configure(sock)
        if self.address.nodrop:
            sock.setsockopt(zmq.XPUB_NODROP, 1)

    def _send(self, parts: list) -> None:
        try:
            self._sock.send_multipart(parts, flags=zmq.NOBLOCK)
            self._sent += 1
        except zmq.Again:
            self._dropped += 1


class ZmqPushSink(_ZmqSink):
    """Lossless pipeline: every frame is delivered in order; a slow receiver slows the run."""

    policy = "block"
    socket_type = zmq.PUSH

    def _send(self, parts: list) -> None:
        sock = self._sock
        start = time.monotonic()
        while True:
            try:
                sock.send_multipart(parts, flags=zmq.NOBLOCK)
                self._sent += 1
                return
            except zmq.Again:
                pass
            if self._closing.is_set():  # close() from another thread: give up this frame quietly
                self._dropped += 1
                return
            if self.address.timeout is not None and time.monotonic() - start > self.address.timeout:
                raise SinkError(f"sink {self.name}: no receiver took a frame for {self.address.timeout:g} s "
                                f"on {self.endpoint}; start a receiver (continuityseq-stream subscribe --pull)")
            sock.poll(100, zmq.POLLOUT)


def from_uri(uri: str) -> _ZmqSink:
    """`zmq+pub://HOST:PORT[?opts]` -> ZmqPubSink, `zmq+push://HOST:PORT[?opts]` -> ZmqPushSink."""
    address = ZmqAddress(uri)
    cls = ZmqPubSink if address.kind == "pub" else ZmqPushSink
    return cls(address, name=uri.split("?")[0])
