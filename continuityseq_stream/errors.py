"""The one exception type users see.

Library code raises `ContinuitySeqError` (or a subclass) with a message that names the argument,
shows the bad value and says what would work. The CLI turns it into one line on stderr and exit
status 2; it never prints and exits from inside the library.
"""


class ContinuitySeqError(Exception):
    """A user-facing error: bad input, an unusable checkpoint, an unreachable target."""


class ConfigError(ContinuitySeqError, ValueError):
    """An option has a value that cannot work (the message says which and what would)."""


class CheckpointError(ContinuitySeqError):
    """A model folder, hub id or weight file cannot be loaded as the requested component."""


class SinkError(ContinuitySeqError):
    """A sink's target cannot be opened or written (unwritable path, refused connection...)."""


class SinkEnded(SinkError):
    """A sink's target went away in the ordinary way (e.g. the reader of stdout closed the pipe):
    the sink ends with one line on stderr, the run and the other sinks go on, and it does not count
    as a failure."""
