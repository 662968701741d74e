"""Capacity: how many demo-model streams this machine makes at once, and full-size streams per GPU on paper.

Measured: `continuityseq-stream cluster` (local back end) with 1..N streams of the trained demo
model (32x32, 4 frames per chunk, 20 steps), each made as fast as it can (`-f 240`, the highest rate: the viewers'
clock never holds generation back), no sink but the service's own. After every stream made its
first chunk, the frames each one makes in `--window` seconds give its generated frames per second;
a count of streams holds "real time at F fps" when every one of them makes at least F frames/s.

On paper (no GPU here): the full-size UNet's and VAE decoder's floating-point operations per chunk
are counted with torch's FlopCounterMode on the meta device (exact for the model's shapes, no
weights, no time), then divided by an assumed sustained GPU throughput (`--gpu-tflops` peak x
`--mfu`): the frames per second one stream could make on one GPU, and so the streams per GPU and per
node of `--gpus` GPUs at the CLI's defaults (576x320, 8 frames per chunk, Fc 8, CFG) for a few step
counts. One stream is sequential (chunk k+1 needs chunk k): it cannot use a second GPU.

    python -m bench.bench_capacity                      # measured 1..4 streams, then the paper figures
    python -m bench.bench_capacity --paper-only --gpu-tflops 989 --mfu 0.35 --gpus 8
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from ._common import PYTHON, bench_env, free_port, load, make_parser, warm_demo_cache

DEMO_FRAMES = 4


def _call(method: str, url: str, body=None, timeout: float = 600.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # the API's one-line error says why
        raise SystemExit(f"{method} {url}: {exc.code} {exc.read().decode(errors='replace')}") from None


def _frames(base: str, stream_id: str) -> int:
    return int(_call("GET", f"{base}streams/{stream_id}/api/status", timeout=30).get("frames_made") or 0)


def measure(count: int, window: float, threads: int, workdir: str) -> list[float]:
    """Generated frames/s of each of `count` demo streams running at once."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    env = bench_env(threads, cache=os.path.join(workdir, "cache"))
    log = open(os.path.join(workdir, f"cluster{count}.log"), "wb")
    cluster = subprocess.Popen([PYTHON, "-m", "continuityseq_stream.cli", "cluster", "--port", str(port),
                                "--state-root", os.path.join(workdir, f"root{count}"), "--max-streams", str(count),
                                "--stop-streams-on-exit"], stdout=subprocess.DEVNULL, stderr=log, env=env,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while b"serving streams on" not in open(log.name, "rb").read():
            if cluster.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the cluster did not start: {open(log.name).read()[-1500:]}")
            time.sleep(0.2)
        ids = [f"s{i}" for i in range(count)]
        for i, stream_id in enumerate(ids):
            _call("POST", base + "streams", {"id": stream_id, "flags": {
                "model": "demo", "prompt": "a red circle moving left on a gray background", "seed": i,
                "fps": 240, "threads": threads}})
        deadline = time.monotonic() + 300
        while min(_frames(base, s) for s in ids) < DEMO_FRAMES:
            if time.monotonic() > deadline:
                raise SystemExit("the streams made no chunk in 300 s")
            time.sleep(0.5)
        start = {s: (_frames(base, s), time.monotonic()) for s in ids}
        time.sleep(window)
        return [(_frames(base, s) - start[s][0]) / (time.monotonic() - start[s][1]) for s in ids]
    finally:
        cluster.send_signal(signal.SIGTERM)
        try:
            cluster.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait()


def counted_tflop(frames: int, cond: int, height: int, width: int) -> tuple[float, float]:
    """(UNet TFLOP per call with CFG, VAE decode TFLOP per frame) of the full-size model, counted on
    the meta device."""
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    from continuityseq_stream.models import ContinuitySeqUNet

    h, w = height // 8, width // 8
    with torch.device("meta"):
        unet = ContinuitySeqUNet().eval()
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4).eval()
        x, y = torch.randn(2, 4, frames, h, w), torch.randn(1, 4, cond, h, w)
        e, t, z = torch.randn(2, 77, 1024), torch.tensor(500), torch.randn(1, 4, h, w)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as unet_count:
            unet(x, y, t, e)
        with FlopCounterMode(display=False) as vae_count:
            vae.decode(z)
    return unet_count.get_total_flops() / 1e12, vae_count.get_total_flops() / 1e12


def paper(args) -> None:
    frames, cond, height, width = 8, 8, 320, 576  # the CLI's defaults
    effective = args.gpu_tflops * args.mfu
    print(f"on paper: full-size model at {width}x{height}, {frames} frames per chunk, Fc {cond}, CFG; GPU "
          f"{args.gpu_tflops:g} TFLOP/s peak x {args.mfu:g} sustained = {effective:g} TFLOP/s; node of {args.gpus} GPUs")
    unet_t, vae_t = counted_tflop(frames, cond, height, width)
    print(f"  counted: UNet {unet_t:.1f} TFLOP per call (CFG batch of 2), VAE decode {vae_t:.2f} TFLOP per frame")
    for steps in (25, 15, 10):
        total = steps * unet_t + frames * vae_t
        seconds = total / effective
        fps = frames / seconds
        cells = []
        for out_fps in (8, 16):
            per_gpu = int(fps // out_fps)
            cells.append(f"{out_fps} fps: {per_gpu} per GPU, {per_gpu * args.gpus} per node" if per_gpu else
                         f"{out_fps} fps: one stream reaches {fps / out_fps:.2f}x real time")
        print(f"  {steps:>2} steps: {total:.0f} TFLOP/chunk "
              f"-> {seconds:.2f} s/chunk, {fps:.1f} frames/s per GPU; " + "; ".join(cells))


def main(argv=None) -> None:
    p = make_parser(__doc__, threads=1, threads_help="--threads of each stream's producer")
    p.add_argument("--max-streams", type=int, default=4, help="measure 1..N streams at once")
    p.add_argument("--window", type=float, default=60.0, help="seconds each count is measured")
    p.add_argument("--paper-only", action="store_true", help="only the on-paper GPU figures")
    p.add_argument("--gpu-tflops", type=float, default=989.0, help="a GPU's dense fp16/bf16 peak (H100/H200 SXM: 989)")
    p.add_argument("--mfu", type=float, default=0.35, help="the share of the peak a UNet sustains")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    args = p.parse_args(argv)
    if args.quick:
        args.max_streams, args.window = 1, 5.0
    if not args.paper_only:
        with tempfile.TemporaryDirectory() as workdir:
            warm_demo_cache(bench_env(args.threads, cache=os.path.join(workdir, "cache")))
            print(f"measured: demo-model streams at once on {os.cpu_count()} CPUs ({args.threads} producer "
                  f"thread(s) each; {args.window:g} s window; {load()})", flush=True)
            for count in range(1, args.max_streams + 1):
                rates = measure(count, args.window, args.threads, workdir)
                real = [f for f in (4, 8, 16) if min(rates) >= f]
                print(f"  {count} stream(s): {' '.join(f'{r:.1f}' for r in rates)} frames/s each, "
                      f"{sum(rates):.1f} in all; real time at {max(real) if real else '<4'} fps"
                      f" ({load()})", flush=True)
    paper(args)


if __name__ == "__main__":
    main()
