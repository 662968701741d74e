"""The user's first-frame files (`-i` image, `--init-video` video) read without torch.

The main process checks them before the producer starts (pipeline/preflight.py) and takes the
video size from them (`init_source_size`, `fit_video_size`); the producer reads them again and turns
them into the model's pixels (first_frame.py). Nothing here imports torch: the main process of a run
never loads the model stack. Every failure is one ConfigError naming the argument.
"""

from __future__ import annotations

import collections
import contextlib
import os
from typing import Optional

import numpy as np

from ..errors import ConfigError

__all__ = ["read_image", "read_video_tail", "init_source_size", "fit_video_size"]


@contextlib.contextmanager
def _open_image(path: str):
    """Open `-i/--init-image` lazily (header only until `.load()`), every failure one ConfigError.

    An image over Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS` x 2 pixels, about 179
    megapixels by default) is refused from its header, before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise ConfigError(f"{{init_image}}: {path!r} does not exist; give an image file (PNG, JPEG, ...)",
                          names=("init_image",))
    try:
        with Image.open(path) as im:
            yield im
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ConfigError(f"{{init_image}}: {path!r} has more pixels than Pillow decodes safely ({limit:,}, the "
                          "decompression-bomb limit); "
                          "give an image of at most a few thousand pixels a side (it is resized to the video size)",
                          names=("init_image",)) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ConfigError(f"{{init_image}}: cannot read {path!r} as an image ({type(e).__name__}); give a PNG or JPEG file",
                          names=("init_image",)) from None


def read_image(path: str) -> np.ndarray:
    """`-i/--init-image`: decode the whole image -> uint8 `[H, W, 3]` RGB (a truncated file fails here)."""
    with _open_image(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def _image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file, from its header; the errors of `load_init_image`."""
    with _open_image(path) as im:
        return int(im.width), int(im.height)


def _video_size(path: str) -> tuple[int, int]:
    """(width, height) of a video's first video stream, from the container; the errors of `load_init_video`."""
    import av

    flag = "{init_video}"  # a placeholder: the CLI spells it as its flag (errors.py)
    if not os.path.isfile(path):
        raise ConfigError(f"{flag}: {path!r} does not exist; give a video file (mp4, mkv, webm, ...)", names=("init_video",))
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ConfigError(f"{flag}: {path!r} has no video stream; give a video file", names=("init_video",))
            ctx = container.streams.video[0].codec_context
            return int(ctx.width), int(ctx.height)
    except (av.FFmpegError, OSError) as e:
        raise ConfigError(f"{flag}: cannot open {path!r} as a video ({type(e).__name__}); give an mp4/mkv/webm file",
                          names=("init_video",)) from None


def init_source_size(init_image: Optional[str] = None, init_video: Optional[str] = None) -> Optional[tuple[int, int]]:
    """(width, height) of the `-i` image or the `--init-video` frames (read from the file's header,
    nothing decoded), or None without either. Missing or unreadable files raise ConfigError."""
    if init_image is not None:
        return _image_size(init_image)
    if init_video is not None:
        return _video_size(init_video)
    return None


def _down_to(v: int, multiple: int) -> int:
    """The largest multiple of `multiple` <= v."""
    return v - v % multiple


def fit_video_size(source: tuple[int, int], width: Optional[int] = None, height: Optional[int] = None,
                   *, name: str = "init_image", multiple: int = 8) -> tuple[int, int]:
    """The video size for a first frame of size `source` (width, height) -> (width, height).

    As the original: the source's own size, each side rounded down to a multiple of 8 (the VAE
    downsamples by 8), so a 205x127 image gives a 200x120 video. A given `width` / `height` (the
    user's -WI / -HI) wins; with only one of them given the other keeps the source's aspect ratio
    (rounded down to a multiple of 8, at least 8). A source smaller than 8 pixels in a side that
    is not given raises ConfigError naming the argument `name` (init_image or init_video).
    """
    sw, sh = source
    if width is not None and height is not None:
        return width, height
    if width is None and height is None:
        w, h = _down_to(sw, multiple), _down_to(sh, multiple)
        if w < multiple or h < multiple:
            raise ConfigError(f"{{{name}}}: it is {sw}x{sh} pixels; the video needs at least {multiple}x{multiple}: "
                              "give a larger one, or the size with {width}/{height}", names=(name, "width", "height"))
        return w, h
    if width is not None:
        return width, max(multiple, _down_to(width * sh // sw, multiple))
    return max(multiple, _down_to(height * sw // sh, multiple)), height


def read_video_tail(path: str, max_frames: int) -> np.ndarray:
    """`--init-video`: the last `max_frames` frames of a video -> uint8 `[k, H, W, 3]` RGB, in order.

    Seeks to a key frame shortly before the end (about `max_frames` frames plus a margin) and decodes
    from there, so a long video is not decoded from the start; falls back to a full decode when the
    duration is unknown or the seek gives too few frames.
    """
    import av

    flag = "{init_video}"  # a placeholder: the CLI spells it as its flag (errors.py)
    if not os.path.isfile(path):
        raise ConfigError(f"{flag}: {path!r} does not exist; give a video file (mp4, mkv, webm, ...)", names=("init_video",))
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as e:
        raise ConfigError(f"{flag}: cannot open {path!r} as a video ({type(e).__name__}); give an mp4/mkv/webm file", names=("init_video",)) from None
    try:
        if not container.streams.video:
            raise ConfigError(f"{flag}: {path!r} has no video stream; give a video file", names=("init_video",))
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"

        def tail(seek_to: Optional[float]) -> list:
            if seek_to is not None:
                container.seek(int(seek_to / stream.time_base), stream=stream, backward=True, any_frame=False)
            last = collections.deque(maxlen=max_frames)
            for frame in container.decode(stream):
                last.append(frame.to_ndarray(format="rgb24"))
            return list(last)

        frames: list = []
        rate = float(stream.average_rate or stream.guessed_rate or 0) or None
        duration = float(stream.duration * stream.time_base) if stream.duration else (
            container.duration / av.time_base if container.duration else None)
        if duration and rate:
            seek_to = duration - (max_frames + 2) / rate - 1.0
            if seek_to > 0:
                try:
                    frames = tail(seek_to)
                except av.FFmpegError:
                    frames = []
        if len(frames) < max_frames:
            container.seek(0)
            frames = tail(None)
    except av.FFmpegError as e:
        raise ConfigError(f"{flag}: cannot decode {path!r} ({type(e).__name__}: {e}); give a playable video file", names=("init_video",)) from None
    finally:
        container.close()
    if not frames:
        raise ConfigError(f"{flag}: {path!r} contains no decodable frames; give a playable video file", names=("init_video",))
    return np.stack(frames)
