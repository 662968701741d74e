"""Issue #14: many streams behind one API, on the local back end and on Ray.

The end-to-end test runs `tests/cluster_check.py` (the real `cluster` command, real streams of the
trained demo model, real ZeroMQ readers, kill -9 of a real process) once per back end, each in a
network namespace of its own (Ray binds every interface it finds). The quick tests check the parts
without processes: the stream spec, the options, the metrics merge and the API's routes, errors and
token over a back end that makes no processes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from continuityseq_stream.cluster.api import ApiRequest, ClusterApi
from continuityseq_stream.cluster.metrics import merge_metrics, service_metrics
from continuityseq_stream.cluster.options import ClusterOptions
from continuityseq_stream.cluster.spec import StreamSpec
from continuityseq_stream.errors import ClusterFull, ConfigError, StreamNotFound

HERE = Path(__file__).resolve().parent


# -- the whole thing, per back end -----------------------------------------------------------------
def _ray_missing() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_two_streams_steered_apart_survive_kill9_and_the_ingress(backend, tmp_path):
    from service_helpers import namespace_skip_reason, run_in_namespace

    reason = namespace_skip_reason(packages="")
    if reason:
        pytest.skip(reason)
    if backend == "ray" and _ray_missing():
        pytest.skip("needs Ray: pip install 'continuityseq_stream[ray]'")
    out = run_in_namespace(HERE / "cluster_check.py", backend, str(tmp_path), timeout=1200)
    print(json.dumps(out, indent=1))

    # creating: two streams run, a third is refused as full, bad flags are one line from serve itself
    assert out["create_a"][:2] == [201, "running"] and out["create_b"] == [201, "running"]
    assert out["full"][0] == 503 and "full" in out["full"][1]["error"]
    assert out["bad_flag"][0] == 400 and "--guidance-scale" in out["bad_flag"][1]["error"]
    assert "\n" not in out["bad_flag"][1]["error"]
    assert out["reserved_flag"][0] == 400 and "'port' is set by the service" in out["reserved_flag"][1]["error"]
    assert out["unknown"][0] == 404 and out["listed"] == ["a", "b"]

    # each stream reaches its own reader with its own prompt; steering a leaves b alone
    assert out["prompts_before"] == [["a red ball"], ["a blue sky"]]
    assert out["set_prompt"][0] == 200
    assert out["prompts_after"] == [["a green cube", "a red ball"], ["a blue sky"]]
    assert out["status_b_prompt"] == "a blue sky"

    # kill -9 of a's worker: restarted, resumed, indices go on, the seam is an ordinary one
    assert out["worker_pid_is_not_stream_pid"] is (backend == "ray")  # on Ray the actor's worker dies
    assert out["restarted"] == {"state": "running", "restarts": 1, "resumed": True}
    assert out["a_indices_contiguous"] and out["a_first_index"] == 0
    assert out["a_resumed_at"] <= out["a_last_before_kill"] + 1  # nothing skipped
    assert out["a_remade_identical"]  # a frame made again is made bit for bit the same
    low, high = out["seam_in_run"]
    assert out["seam_restart"] <= high, (out["seam_restart"], out["seam_in_run"])
    # b never stopped: it kept delivering, without a gap, while a was down
    assert out["b_frames_during_restart"] > 0 and out["b_indices_contiguous"] and out["b_restarts"] == 0

    # metrics per stream, health per stream
    assert out["metrics_streams"] == ["a", "b"] and out["metrics_restarts_a"] == ["1"]
    assert out["metrics_frames_labelled"]
    assert out["health_a"][0] == 200 and out["health_a"][1]["healthy"] is True

    # the ingress stops, the streams go on; a new one lists the same processes
    assert out["cluster_exit"] == 0 and out["alive_without_ingress"] == {"a": True, "b": True}
    assert out["relisted"] == {"a": ["running", True], "b": ["running", True]}

    # stop keeps what was written; delete removes the stream and its folder; nothing is left running
    assert out["stop_b"] == "stopped" and out["b_file_frames"] >= 3 * 4
    assert out["delete"] == [200, 200] and out["after_delete"] == [] and out["folders_left"] == []
    assert out["cluster_exit_final"] == 0 and out["left_processes"] == []


# -- the parts, without processes --------------------------------------------------------------------
def test_a_spec_becomes_serve_flags_and_refuses_what_the_service_sets():
    spec = StreamSpec.from_json({"id": "venue-a", "flags": {"model": "demo", "num_frames": 8, "-p": "a red ball",
                                                            "sink": ["file:a.mp4", "zmq+pub://:5555"],
                                                            "xformers": False, "forever": True}})
    assert spec.argv() == ["--model", "demo", "--num-frames", "8", "--p", "a red ball", "--sink", "file:a.mp4",
                           "--sink", "zmq+pub://:5555", "--forever"]
    with pytest.raises(ConfigError, match="'state-dir' is set by the service"):
        StreamSpec("a", (("state_dir", "x"),))
    with pytest.raises(ConfigError, match="id: got 'A B'"):
        StreamSpec("A B")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'prompt'"):
        StreamSpec.from_json({"id": "a", "prompt": "x"})
    with pytest.raises(ConfigError, match="use a finite number"):
        StreamSpec("a", (("guidance-scale", float("nan")),))
    with pytest.raises(ConfigError, match="use a string, a number"):
        StreamSpec("a", (("prompt", {"x": 1}),))
    with pytest.raises(ConfigError, match="is not a flag name"):
        StreamSpec("a", (("--bad name", 1),))


def test_cluster_options_are_validated():
    assert ClusterOptions().host == "127.0.0.1"
    with pytest.raises(ConfigError, match="--host: '0.0.0.0' is not a loopback address"):
        ClusterOptions(host="0.0.0.0")
    assert ClusterOptions(host="0.0.0.0", token="x" * 20).token
    with pytest.raises(ConfigError, match="--max-streams: got 0"):
        ClusterOptions(max_streams=0)
    with pytest.raises(ConfigError, match="--stream-cpus: got nan"):
        ClusterOptions(stream_cpus=float("nan"))
    with pytest.raises(ConfigError, match="unknown cluster option"):
        ClusterOptions.from_dict({"max_stream": 2})


def test_metrics_of_many_streams_are_labelled_and_grouped_by_family():
    one = ("# HELP x_total Frames.\n# TYPE x_total counter\nx_total 5\n"
           "# HELP h Chunk time.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_count 2\nh_sum 1.5\n")
    two = one.replace("x_total 5", "x_total 7")
    text = merge_metrics({"a": one, "b": two})
    lines = text.splitlines()
    assert lines.count("# TYPE x_total counter") == 1 and lines.count("# TYPE h histogram") == 1
    assert 'x_total{stream="a"} 5' in lines and 'x_total{stream="b"} 7' in lines
    assert 'h_bucket{stream="b",le="1"} 2' in lines
    # a family's samples stay together, right after its TYPE line
    at = lines.index("# TYPE x_total counter")
    assert lines[at + 1:at + 3] == ['x_total{stream="a"} 5', 'x_total{stream="b"} 7']
    own = service_metrics([{"id": "a", "state": "running", "restarts": 2}, {"id": "b", "state": "stopped"}])
    assert 'continuityseq_cluster_stream_restarts_total{stream="a"} 2' in own
    assert 'continuityseq_cluster_stream_up{stream="b"} 0' in own
    assert 'continuityseq_cluster_streams{state="running"} 1' in own


class FakeBackend:
    """A back end that makes no processes: enough for the API's routing, errors and token."""

    name = "fake"

    def __init__(self, capacity: int = 1) -> None:
        self.capacity, self.made = capacity, {}

    def create(self, spec):
        if len(self.made) >= self.capacity:
            raise ClusterFull("the service is full")
        self.made[spec.id] = {"id": spec.id, "state": "running", "restarts": 0, "flags": dict(spec.flags)}
        return self.made[spec.id]

    def streams(self):
        return list(self.made.values())

    def info(self, stream_id):
        if stream_id not in self.made:
            raise StreamNotFound(f"no stream {stream_id!r}")
        return dict(self.made[stream_id])

    def endpoint(self, stream_id):
        self.info(stream_id)
        return None, ""

    def stop(self, stream_id):
        self.made[stream_id]["state"] = "stopped"
        return self.info(stream_id)

    def delete(self, stream_id):
        self.info(stream_id)
        del self.made[stream_id]

    def close(self, stop_streams):
        pass


def _ask(api, method, path, body=b"", token=None, remote="127.0.0.1"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = asyncio.run(api.handle(ApiRequest(method, path, "", headers, body, remote)))
    text = answer.body.decode()
    return answer.status, (json.loads(text) if answer.headers.get("Content-Type") == "application/json" else text)


def test_api_routes_errors_and_token_over_any_back_end():
    token = "t" * 24
    api = ClusterApi(FakeBackend(capacity=1), ClusterOptions(token=token))
    assert _ask(api, "GET", "/healthz")[0] == 200  # public
    assert "<title>continuityseq streams</title>" in _ask(api, "GET", "/")[1]  # public
    status, answer = _ask(api, "GET", "/streams")
    assert status == 401 and "Bearer" in answer["error"]
    assert _ask(api, "GET", "/streams", token="wrong" * 5)[0] == 401
    status, made = _ask(api, "POST", "/streams", b'{"id": "a", "flags": {"prompt": "x"}}', token)
    assert status == 201 and made["id"] == "a" and made["flags"] == {"prompt": "x"}
    status, answer = _ask(api, "POST", "/streams", b'{"id": "b"}', token)
    assert status == 503 and answer["error"] == "the service is full"
    status, answer = _ask(api, "POST", "/streams", b"[" * 5000 + b"]" * 5000, token)
    assert status == 400 and "not JSON" in answer["error"]
    assert _ask(api, "GET", "/streams/zz", token=token)[0] == 404
    assert _ask(api, "PUT", "/streams/a", token=token)[0] == 405
    status, answer = _ask(api, "POST", "/streams/a/api/prompt", b'{"prompt": "y"}', token)
    assert status == 503 and "not serving" in answer["error"]  # the stream's own API is not reachable
    assert _ask(api, "GET", "/streams/a/video", token=token)[0] == 404  # no frames through the ingress
    assert _ask(api, "POST", "/streams/a/stop", token=token)[1]["state"] == "stopped"
    assert _ask(api, "DELETE", "/streams/a", token=token) == (200, {"ok": True, "deleted": "a"})
    status, answer = _ask(api, "POST", "/streams", b"x" * (70 * 1024), token)
    assert status == 413


def test_api_rate_limits_each_client():
    api = ClusterApi(FakeBackend(), ClusterOptions(rate=0.01, burst=3))
    codes = [_ask(api, "GET", "/healthz", remote="10.0.0.1")[0] for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert _ask(api, "GET", "/healthz", remote="10.0.0.2")[0] == 200


def test_ray_flag_without_ray_says_how_to_install(monkeypatch):
    from continuityseq_stream.cluster import ray_backend

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ConfigError) as info:
        ray_backend.import_ray()
    assert str(info.value) == ("--ray needs Ray, which is not installed; install it with "
                               "pip install 'continuityseq_stream[ray]'")


@pytest.mark.slow
def test_cluster_bad_options_are_one_line_and_exit_2(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from continuityseq_stream.cli import main\n"
            "main(sys.argv[1:], prog_name='continuityseq-stream')")
    cases = {("--ray", "auto"): "--ray needs Ray, which is not installed; install it with pip install "
                                "'continuityseq_stream[ray]'",
             ("--max-streams", "0"): "--max-streams: got 0; use a whole number of streams >= 1",
             ("--host", "0.0.0.0"): "--host: '0.0.0.0' is not a loopback address"}
    for args, expected in cases.items():
        proc = subprocess.run([sys.executable, "-c", code, "cluster", "--state-root", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"continuityseq-stream: error: {expected}"), lines


@pytest.mark.slow  # starts an HTTP server (in this process)
def test_per_stream_routes_are_forwarded_with_the_streams_token_and_whep_locations_rewritten():
    """The ingress forwards /streams/ID/... to the stream's own service (here a small aiohttp app in
    this process standing in for it), adds the stream's token, and rewrites a WHEP session's URL so
    that the viewer's DELETE comes back through the ingress."""
    from aiohttp import web

    seen = []

    async def whep(request):
        seen.append((request.method, request.path, request.headers.get("Authorization"),
                     request.headers.get("Content-Type"), await request.text()))
        if request.method == "DELETE":
            return web.Response(status=204)
        return web.Response(status=201, text="v=0 answer", content_type="application/sdp",
                            headers={"Location": "/whep/abc123"})

    async def scenario():
        app = web.Application()
        app.router.add_post("/whep", whep)
        app.router.add_delete("/whep/{session}", whep)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        backend = FakeBackend()
        backend.create(StreamSpec("a"))
        backend.endpoint = lambda stream_id: (backend.info(stream_id) and f"http://127.0.0.1:{port}/", "stream-token")
        api = ClusterApi(backend, ClusterOptions())
        try:
            offer = await api.handle(ApiRequest("POST", "/streams/a/whep", "", {"Content-Type": "application/sdp"},
                                                b"v=0 offer", "127.0.0.1"))
            gone = await api.handle(ApiRequest("DELETE", "/streams/a/whep/abc123", "", {}, b"", "127.0.0.1"))
            missing = await api.handle(ApiRequest("POST", "/streams/zz/whep", "", {}, b"", "127.0.0.1"))
        finally:
            await api.close()
            await runner.cleanup()
        return offer, gone, missing

    offer, gone, missing = asyncio.run(scenario())
    assert offer.status == 201 and offer.body == b"v=0 answer"
    assert offer.headers["Location"] == "/streams/a/whep/abc123"
    assert offer.headers["Content-Type"].startswith("application/sdp")
    assert gone.status == 204 and missing.status == 404
    assert seen == [("POST", "/whep", "Bearer stream-token", "application/sdp", "v=0 offer"),
                    ("DELETE", "/whep/abc123", "Bearer stream-token", None, "")]


def test_ray_streams_ask_for_a_gpu_each_when_the_cluster_has_gpus_else_cpus():
    """Without a GPU here, the placement rule is checked against a stand-in for ray's resource calls."""
    from continuityseq_stream.cluster.ray_backend import RayBackend

    class FakeRay:
        def __init__(self, total, free):
            self.total, self.free = total, free

        def cluster_resources(self):
            return self.total

        def available_resources(self):
            return self.free

    backend = RayBackend.__new__(RayBackend)
    backend.stream_cpus = 0.5
    backend.ray = FakeRay({"CPU": 64, "GPU": 8}, {"CPU": 60, "GPU": 0})
    assert backend._resources() == {"num_gpus": 1, "num_cpus": 0}
    assert backend._fits("GPU", 1, wait=0) is False  # every GPU holds a stream: full, not queued
    backend.ray = FakeRay({"CPU": 2}, {"CPU": 0.5})
    assert backend._resources() == {"num_cpus": 0.5}
    assert backend._fits("CPU", 0.5, wait=0) is True
