"""Every exception class of the package, and how one crosses the process boundary.

Library code raises `ContinuitySeqError` (or a subclass) with a message that names the argument,
shows the bad value and says what would work. The CLI turns it into one line on stderr and exit
status 2; it never prints and exits from inside the library.

One message, two audiences: a message may name arguments as `{name}` placeholders, listed in
`names`. `str(e)` spells them as the Python argument names (`guidance_scale`), `e.render(spell)` as
the caller chooses: the CLI passes its flag spelling (`-g/--guidance-scale`). So the wording of a
check lives in one place and no CLI flag strings are scattered through the library.

The producer runs in its own process and reports its error to the main process as plain data
(`error_state`); `rebuild_error` makes the same class with the same template and names there, so a
`ConfigError` raised in the producer is rendered with CLI flags like one raised in the main process.
`EndOfStream` (the ring closed, a reader removed) is a signal between the parts of a run, not a
user error: it is not a `ContinuitySeqError`, so no handler of user errors swallows it.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Optional


class ContinuitySeqError(Exception):
    """A user-facing error: bad input, an unusable checkpoint, an unreachable target.

    message: the text; `{name}` for each name in `names` stands for that argument.
    """

    def __init__(self, message: str = "", *, names: Iterable[str] = ()) -> None:
        self.template = str(message)
        self.names = tuple(names)
        super().__init__(self.render())

    @property
    def argument(self) -> Optional[str]:
        """The argument the error is about (the first name), or None."""
        return self.names[0] if self.names else None

    def render(self, spell: Callable[[str], str] = str) -> str:
        """The message with every `{name}` placeholder spelled by `spell` (default: the name itself)."""
        text = self.template
        for name in self.names:
            text = text.replace("{" + name + "}", spell(name))
        return text


    def state(self) -> tuple[str, str, tuple[str, ...]]:
        """(class name, template, names): what `rebuild_error` needs to make this error again."""
        return type(self).__name__, self.template, self.names

    @classmethod
    def rebuilt(cls, template: str, names: Iterable[str] = ()) -> "ContinuitySeqError":
        """An instance from a template and names alone (subclass-specific extras are left unset)."""
        error = cls.__new__(cls)
        ContinuitySeqError.__init__(error, template, names=names)
        return error


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


class UpdateError(ConfigError):
    """A live update (control command) has a bad field; `field` names it (None when the message as a
    whole is wrong). The control server answers it to the client; it never ends a run."""

    field: Optional[str] = None

    def __init__(self, message: str, field: Optional[str] = None, *, names: Iterable[str] = ()) -> None:
        super().__init__(message, names=names)
        self.field = field


class ControlError(ContinuitySeqError):
    """A control request failed: no answer in time, or the server answered with an error
    (`response`: the server's answer, when there was one)."""

    response: Optional[dict] = None

    def __init__(self, message: str, response: Optional[dict] = None, *, names: Iterable[str] = ()) -> None:
        super().__init__(message, names=names)
        self.response = response


class ChannelError(ContinuitySeqError):
    """The update channel between the runtime and the producer broke (e.g. the other side died)."""


class RingTimeout(ContinuitySeqError):
    """The ring's lock could not be taken in time (another process died holding it?)."""


class StreamNotFound(ContinuitySeqError):
    """A multi-stream service has no stream with this id (HTTP 404)."""


class ClusterFull(ContinuitySeqError):
    """A multi-stream service already runs as many streams as it may (`--max-streams`, or no Ray
    node can hold one more); HTTP 503."""


class EndOfStream(Exception):
    """A signal, not a user error: the stream a part of the run was reading or writing has ended."""


class RingClosed(EndOfStream):
    """The ring was closed (end of stream) and holds nothing more for this reader / writer."""


class ReaderRemoved(EndOfStream):
    """This reader was removed from the ring."""


def error_state(error: BaseException) -> tuple[str, str, tuple[str, ...]]:
    """(class name, template, names) of any exception, as plain data that pickles across processes."""
    if isinstance(error, ContinuitySeqError):
        return error.state()
    return type(error).__name__, str(error) or repr(error), ()


def rebuild_error(name: str, template: str, names: Iterable[str] = ()) -> ContinuitySeqError:
    """The error `error_state` described, rebuilt in this process: the same class when it is one of
    this module's `ContinuitySeqError` classes, else a plain `ContinuitySeqError` with the message."""
    cls = getattr(sys.modules[__name__], name, None)
    if not (isinstance(cls, type) and issubclass(cls, ContinuitySeqError)):
        cls = ContinuitySeqError
    return cls.rebuilt(template, names)


def bad_value(name: str, value: Any, what_works: str, *mentions: str) -> ConfigError:
    """`ConfigError` "`name`: got `value`; `what_works`" (`what_works` may name the `mentions` as
    `{other}` placeholders too)."""
    return ConfigError(f"{{{name}}}: got {value!r}; {what_works}", names=(name, *mentions))
