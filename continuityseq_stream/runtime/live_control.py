"""The run's live control: the control socket's server and the controller that turns its commands
into updates for the producer (through the run's `UpdateChannel`) and stop requests."""

from __future__ import annotations

import logging
from typing import Callable

from ..config import GenerationConfig
from ..control import ControlServer, LiveController
from ..prompts import UpdateChannel
from ..resume import initial_live_settings
from .options import RuntimeOptions

__all__ = ["LiveControl"]


class LiveControl:
    """Binds `options.control` and answers its commands: settings go to `channel`, `stop` ends the
    run after the chunk in progress (`request_stop(reason, finish_chunk=True)`), `status` answers
    `status_fields()`."""

    def __init__(self, config: GenerationConfig, options: RuntimeOptions, channel: UpdateChannel,
                 log: Callable[[str], None], request_stop: Callable[..., None], status_fields: Callable[[], dict]) -> None:
        self.config, self.options, self.channel, self.log = config, options, channel, log
        self.request_stop, self.status_fields = request_stop, status_fields
        self.controller = LiveController(channel, initial_live_settings(config, options.schedule))
        self.server: ControlServer | None = None

    def start(self) -> None:
        """Bind the control socket (ConfigError when refused or taken: before any model work)."""
        self.server = ControlServer(self.options.control, allow_remote=self.options.control_allow_remote,
                                    on_update=self._on_update, on_stop=self._on_stop, on_status=self.status_fields)
        self.server.start()
        logging.getLogger(__name__).info("control socket on %s", self.server.address)

    def _on_update(self, update: dict) -> dict:
        answer = self.controller.on_update(update)
        self.log(f"control: {update['command']} applies at chunk {answer['applies_at_chunk']}")
        return answer

    def _on_stop(self) -> dict:
        at = self.controller.stop()["applies_at_chunk"]
        self.request_stop("control", finish_chunk=True)
        self.log(f"control: stop; chunk {at} and later will not be made, the sinks finish their files")
        return {"applies_at_chunk": at}

    def live_fields(self) -> dict:
        """The live settings of the chunk in progress (`current_chunk`: the last chunk started) and
        the scheduled prompt changes, for the `status` answer."""
        current = max(self.channel.state()["next_chunk"] - 1, 0)
        start_time = current * self.config.num_frames / self.config.fps
        return {**self.controller.status_fields(current, start_time), "current_chunk": current}

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
