"""The ffmpeg sink without a server: strict options, any ffmpeg target (`ffmpeg:URL`), audio,
refused connections (drops counted, retries give up), and no ffmpeg left behind."""

from __future__ import annotations

import time

import av
import numpy as np
import pytest

from continuityseq_stream.chunk import FrameMeta
from continuityseq_stream.errors import ConfigError, SinkError
from continuityseq_stream.sinks import sink_from_uri
from continuityseq_stream.sinks.base import StreamInfo
from continuityseq_stream.sinks.ffmpeg import FfmpegOptions, FfmpegSink, display_name, ffmpeg_command
from servers import assert_no_children, free_port

W, H, FPS = 64, 48, 20.0


def _frame(i: int) -> np.ndarray:
    f = np.zeros((H, W, 3), np.uint8)
    f[..., 0] = (i * 10) % 256
    f[..., 1] = 100
    return f


def test_options_are_parsed_strictly():
    o = FfmpegOptions.parse("rtmp://live.example/app/KEY?audio=1&preroll=2.5&log=/tmp/x.log&bitrate=2500&retries=3")
    assert (o.target, o.format, o.audio, o.preroll, o.log, o.bitrate, o.retries) == (
        "rtmp://live.example/app/KEY", "flv", True, 2.5, "/tmp/x.log", 2500, 3)
    o = FfmpegOptions.parse("ffmpeg:udp://127.0.0.1:1234?pkt_size=1316#format=mpegts")
    assert (o.target, o.format) == ("udp://127.0.0.1:1234?pkt_size=1316", "mpegts")
    assert FfmpegOptions.parse("ffmpeg:out.mkv").format is None
    with pytest.raises(ConfigError, match="unknown option.*bogus"):
        FfmpegOptions.parse("rtmp://h/app/k?audio=1&bogus=2")
    with pytest.raises(ConfigError, match="audio"):
        FfmpegOptions.parse("rtmp://h/app/k?audio=maybe")
    with pytest.raises(ConfigError, match="preroll"):
        FfmpegOptions.parse("rtmp://h/app/k?preroll=-1")
    with pytest.raises(ConfigError, match="no output URL"):
        FfmpegOptions.parse("ffmpeg:#format=flv")
    assert isinstance(sink_from_uri("rtmps://h/app/key"), FfmpegSink)
    assert display_name("rtmp://live.twitch.tv/app/live_123_secret?audio=1") == "rtmp://live.twitch.tv/app/li***"


def test_command_line_is_low_latency_constant_rate():
    cmd = ffmpeg_command(FfmpegOptions.parse("rtmp://h/app/k?audio=1"), StreamInfo(63, 48, 12.5))
    text = " ".join(cmd)
    for part in ("-f rawvideo -pix_fmt rgb24 -s 63x48 -framerate 12.5 -i pipe:0", "-preset ultrafast",
                 "-tune zerolatency", "-pix_fmt yuv420p", "-g 25", "anullsrc", "-c:a aac", "-f flv", "pad="):
        assert part in text, part
    assert cmd[-1] == "rtmp://h/app/k"


@pytest.mark.slow
def test_ffmpeg_url_to_a_file_with_silent_audio(tmp_path):
    out = tmp_path / "out.ts"
    n = 30
    sink = sink_from_uri(f"ffmpeg:{out}#format=mpegts&audio=1")
    with sink:
        sink.open(StreamInfo(W, H, FPS))
        for i in range(n):
            sink.write(_frame(i), FrameMeta(i, 0, i / FPS, "p"))
    assert_no_children("ffmpeg")
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264" and len(c.streams.audio) == 1
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == n
    for i in (0, n // 2, n - 1):
        assert np.allclose(frames[i].reshape(-1, 3).mean(0), _frame(i).reshape(-1, 3).mean(0), atol=4)
    assert sink.stats()["sent"] == n


@pytest.mark.slow
def test_refused_connection_drops_frames_without_blocking_and_retries_give_up():
    port = free_port()  # nothing listens there
    sink = sink_from_uri(f"rtmp://127.0.0.1:{port}/live/x?retries=2")
    start = time.monotonic()
    slowest = 0.0
    with pytest.raises(SinkError, match="gave up after"):
        with sink:
            sink.open(StreamInfo(W, H, FPS))
            for i in range(400):  # up to 20 s of frames; the backoff 0.5 + 1 + 2 s gives up much sooner
                t = time.monotonic()
                sink.write(_frame(i), FrameMeta(i, 0, i / FPS, "p"))
                slowest = max(slowest, time.monotonic() - t)
    assert time.monotonic() - start < 10
    assert slowest < 0.5
    stats = sink.stats()
    assert stats["dropped"] > 10 and stats["reconnects"] >= 2
    assert_no_children("ffmpeg")


def test_missing_ffmpeg_binary_is_a_sink_error_at_open():
    sink = FfmpegSink(FfmpegOptions.parse("rtmp://127.0.0.1/live/x"), binary="/nonexistent/ffmpeg")
    with pytest.raises(SinkError, match="ffmpeg not found"):
        sink.open(StreamInfo(W, H, FPS))
    sink.close()


def test_wrong_frame_shape_is_a_sink_error(tmp_path):
    sink = sink_from_uri(f"ffmpeg:{tmp_path}/x.ts#format=mpegts")
    with sink:
        sink.open(StreamInfo(W, H, FPS))
        with pytest.raises(SinkError, match="expected uint8"):
            sink.write(np.zeros((H + 2, W, 3), np.uint8), FrameMeta(0, 0, 0.0, "p"))
    assert_no_children("ffmpeg")
