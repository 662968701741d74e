"""`continuityseq-stream serve`: one never-ending stream, served (issue #13).

Modules, one job each (the data flow: runtime -> tap -> hub -> viewers; surfaces -> dispatcher ->
the runtime's control socket):

    options.py     ServiceOptions: bind address, token, OSC, limits (validated, frozen)
    dispatcher.py  the one command dispatcher behind HTTP, OSC and the WebRTC data channel
    tap.py         the service's sink: frames into the hub, per-chunk events, seam scores
    hub.py         the served stream's clock and the frame every viewer shows now
    events.py      per-chunk events to whoever listens (data channels, OSC telemetry, metrics)
    state.py       what the surfaces show: cached status, viewers, producer process, health
    health.py      the /healthz rule          prometheus.py  /metrics
    limits.py      per-client rate limits     openapi.py     the API's schema, from the command table
    http_api.py    the aiohttp application    server.py      its event loop on a thread
    osc.py         OSC commands and telemetry webrtc.py      WHEP viewers and their data channel
    serving.py     serve(): runtime + server, start to end
    command.py     the click command
    page/          the one static page

Nothing here is imported by the package's other modules except the CLI's `serve` command (light).
"""
