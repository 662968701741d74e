"""With `--resume`, the run's file sinks write new files next to the earlier run's (never over them)."""

from __future__ import annotations

import logging
import os
import re
from typing import Iterable

from ..resume import resume_start
from ..sinks.file import FileSink

logger = logging.getLogger(__name__)

__all__ = ["keep_earlier_files"]


def _resumed_name(pattern: str, next_chunk: int, exists) -> str:
    """`out.mp4` -> `out.resume-c000012.mp4` (`-2`, `-3`... when that is taken too)."""
    stem, ext = os.path.splitext(pattern)
    base = f"{stem}.resume-c{next_chunk:06d}"
    candidate, n = base + ext, 1
    while exists(candidate):
        n += 1
        candidate = f"{base}-{n}{ext}"
    return candidate


def _taken(pattern: str, segmented: bool) -> bool:
    """Does a file of this name (any segment of this printf pattern) exist already?"""
    if not segmented:
        return os.path.exists(pattern)
    m = re.search(r"%[-#0 +]*\d*(?:\.\d+)?[diouxX]", pattern)
    if m is None:
        return os.path.exists(pattern)
    folder, prefix = os.path.split(pattern[:m.start()])
    suffix = pattern[m.end():]
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return False
    return any(n.startswith(prefix) and n.endswith(suffix) for n in names)


def keep_earlier_files(sinks: Iterable, config) -> None:
    """With --resume, point every file sink at a new name so the earlier run's file (or segments) is
    never overwritten: `out.mp4` -> `out.resume-c<next chunk>.mp4` (segment patterns alike,
    `out_%03d.mp4` -> `out_%03d.resume-c000012.mp4`)."""
    if not config.resume:
        return
    start = resume_start(config)
    for sink in sinks:
        if isinstance(sink, FileSink):
            segmented = sink.segment_seconds is not None
            new = _resumed_name(sink.pattern, start, lambda p, seg=segmented: _taken(p, seg))
            logger.info("resumed run: %s writes %s (the earlier file is kept)", sink.name, new)
            sink.retarget(new)
