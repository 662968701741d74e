"""Many never-ending streams behind one HTTP API (`continuityseq-stream cluster`).

Each stream is the single-stream service (`serve`) in a process of its own; the back end decides
where that process runs: `LocalBackend` on this machine (at most `--max-streams`), `RayBackend` as a
Ray actor per stream, placed by Ray on a node with a free GPU (or CPUs) and restarted by Ray when
it dies, resuming its video from its saved state. `ClusterApi` is the API over either back end,
served by aiohttp (local) or as a Ray Serve deployment (Ray).

    spec.py        StreamSpec: a stream's id and its serve flags (from the create request's JSON)
    process.py     ServeProcess: one stream's serve child (start, wait until it serves, stop)
    supervisor.py  StreamSupervisor: the child kept alive (restart with --resume), its folder
    backend.py     the Backend interface and LocalBackend
    ray_backend.py RayBackend and the stream actor        ray_ingress.py  the Ray Serve deployment
    api.py         ClusterApi (routes, forwarding to a stream's own API)   http.py  aiohttp app
    metrics.py     the streams' Prometheus texts merged, labelled by stream
    options.py     ClusterOptions                         command.py  the CLI command
"""

from .options import ClusterOptions
from .spec import StreamSpec

__all__ = ["ClusterOptions", "StreamSpec"]
