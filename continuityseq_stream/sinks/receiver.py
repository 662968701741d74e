"""Receive frames from a `zmq+pub://` or `zmq+push://` sink, in three lines of Python:

    from continuityseq_stream.sinks.receiver import subscribe
    for frame, header in subscribe("tcp://127.0.0.1:5555"):      # pull=True for a zmq+push sink
        print(header["index"], frame.shape)                       # frame: uint8 [H, W, 3] RGB

Iteration stops at the sink's end-of-stream message; with no message for `timeout` seconds it raises
TimeoutError (a PUB subscriber that joined late can miss the EOS, so keep a timeout). Frames are
read-only views of the received bytes (`frame.copy()` to modify).

`subscribe_command` is the `continuityseq-stream subscribe` command; this module also runs alone:
`python -m continuityseq_stream.sinks.receiver tcp://127.0.0.1:5555 --count 10`.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from typing import Iterator

import click
import numpy as np
import zmq

__all__ = ["Subscriber", "subscribe", "subscribe_command", "normalize_endpoint"]


def normalize_endpoint(endpoint: str) -> tuple[str, bool | None]:
    """`tcp://h:p`, `h:p`, `zmq+pub://h:p` or `zmq+push://h:p` -> (tcp endpoint, pull or None if unknown)."""
    pull = None
    for scheme, is_pull in (("zmq+pub://", False), ("zmq+push://", True)):
        if endpoint.startswith(scheme):
            endpoint, pull = "tcp://" + endpoint[len(scheme):].split("?")[0], is_pull
    if "://" not in endpoint:
        endpoint = "tcp://" + endpoint
    host, _, port = endpoint[len("tcp://"):].rpartition(":") if endpoint.startswith("tcp://") else ("", "", "")
    if endpoint.startswith("tcp://") and not host:
        endpoint = f"tcp://127.0.0.1:{port}"
    return endpoint, pull


class Subscriber:
    """One SUB (for PUB sinks) or PULL (for PUSH sinks) socket with a receive timeout.

    `recv()` returns (frame, header), or None at end-of-stream. `missed` counts gaps in the frame
    index (frames a lossy PUB sink or this slow subscriber skipped).
    """

    def __init__(self, endpoint: str, *, pull: bool | None = None, bind: bool = False,
                 timeout: float | None = 10.0, hwm: int | None = None) -> None:
        self.endpoint, implied = normalize_endpoint(endpoint)
        self.pull = bool(implied if pull is None else pull)
        self.timeout = timeout
        self.received = 0
        self.missed = 0
        self.eos: dict | None = None
        self._last_index: int | None = None
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PULL if self.pull else zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        # a small receive queue: a slow SUB reader then skips frames instead of queueing them all
        self._sock.setsockopt(zmq.RCVHWM, hwm or (16 if self.pull else 4))
        if not self.pull:
            self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            (self._sock.bind if bind else self._sock.connect)(self.endpoint)
            if bind:  # a wildcard port (tcp://127.0.0.1:*) becomes the real one
                self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self.close()
            raise ConnectionError(f"cannot {'bind' if bind else 'connect to'} {self.endpoint}: {exc}") from exc

    def recv(self) -> tuple[np.ndarray, dict] | None:
        if self.eos is not None:
            return None
        wait = None if self.timeout is None or self.timeout <= 0 else int(self.timeout * 1000)
        if not self._sock.poll(wait, zmq.POLLIN):
            raise TimeoutError(f"no frame from {self.endpoint} within {self.timeout:g} s "
                               f"(is the sink running, and is it {'zmq+push' if self.pull else 'zmq+pub'}?)")
        parts = self._sock.recv_multipart()
        header = json.loads(parts[0])
        if header.get("eos"):
            self.eos = header
            return None
        index = int(header["index"])
        if self._last_index is not None and index > self._last_index + 1:
            self.missed += index - self._last_index - 1
        self._last_index = index
        self.received += 1
        frame = np.frombuffer(parts[1], dtype=header["dtype"]).reshape(header["shape"])
        return frame, header

    def __iter__(self) -> Iterator[tuple[np.ndarray, dict]]:
        while (item := self.recv()) is not None:
            yield item

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
            self._ctx.term()

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def subscribe(endpoint: str, *, pull: bool | None = None, bind: bool = False,
              timeout: float | None = 10.0) -> Iterator[tuple[np.ndarray, dict]]:
    """Yield (frame uint8 [H, W, 3], header dict) until end-of-stream. See the module docstring."""
    with Subscriber(endpoint, pull=pull, bind=bind, timeout=timeout) as sub:
        yield from sub


class _Mp4Writer:
    """Frames from the receiver into an H.264 mp4 (PyAV), at the fps the headers carry."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.container = None
        self.stream = None
        self.count = 0

    def write(self, frame: np.ndarray, header: dict) -> None:
        import av

        h, w = (frame.shape[0] // 2) * 2, (frame.shape[1] // 2) * 2  # yuv420p wants even sizes
        if self.container is None:
            rate = Fraction(header.get("fps") or 8).limit_denominator(1001)
            self.container = av.open(self.path, "w")
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
        video = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w]), format="rgb24")
        video.pts = self.count
        video.time_base = 1 / Fraction(self.stream.average_rate)
        self.container.mux(self.stream.encode(video))
        self.count += 1

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode(None))
            self.container.close()
            self.container = None


@click.command("subscribe")
@click.argument("endpoint")
@click.option("--pull", is_flag=True, default=None,
              help="PULL from a zmq+push sink (default: SUB to a zmq+pub sink; implied by a zmq+push:// endpoint).")
@click.option("--bind", is_flag=True, help="Bind the endpoint (when the sink was given ?connect=1).")
@click.option("--count", "-n", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop after this many frames (0: until end-of-stream).")
@click.option("--out", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the frames into this video file (H.264).")
@click.option("--print/--no-print", "print_", default=None,
              help="Print one JSON header line per frame on stdout (default: on unless --out).")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait for a frame before giving up (0: forever).")
def subscribe_command(endpoint, pull, bind, count, out, print_, timeout):
    """Receive frames from a zmq+pub / zmq+push sink at ENDPOINT (e.g. tcp://127.0.0.1:5555)."""
    show = (out is None) if print_ is None else print_
    writer = _Mp4Writer(out) if out else None
    try:
        with Subscriber(endpoint, pull=pull, bind=bind, timeout=timeout) as sub:
            for frame, header in sub:
                if show:
                    line = dict(header, mean=[round(float(v), 1) for v in frame.reshape(-1, frame.shape[-1]).mean(0)])
                    click.echo(json.dumps(line))
                if writer:
                    writer.write(frame, header)
                if count and sub.received >= count:
                    break
            end = "end-of-stream" if sub.eos else "count reached"
            click.echo(f"subscribe: {sub.received} frames, {sub.missed} missed, {end}", err=True)
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None
    except ConnectionError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if writer:
            writer.close()


if __name__ == "__main__":
    sys.exit(subscribe_command())
