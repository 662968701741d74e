"""The one exception type users see.

Library code raises `ContinuitySeqError` (or a subclass) with a message that names the argument,
shows the bad value and says what would work. The CLI turns it into one line on stderr and exit
status 2; it never prints and exits from inside the library.

One message, two audiences: a message may name arguments as `{name}` placeholders, listed in
`names`. `str(e)` spells them as the Python argument names (`guidance_scale`), `e.render(spell)` as
the caller chooses: the CLI passes its flag spelling (`-g/--guidance-scale`). So the wording of a
check lives in one place and no CLI flag strings are scattered through the library.
"""

from __future__ import annotations

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


def bad_value(name: str, value: Any, what_works: str, *mentions: str) -> ConfigError:
    """`ConfigError` "`name`: got `value`; `what_works`" (`what_works` may name the `mentions` as
    `{other}` placeholders too)."""
    return ConfigError(f"{{{name}}}: got {value!r}; {what_works}", names=(name, *mentions))
