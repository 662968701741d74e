"""Model speed: UNet forward and full-chunk time, with and without CFG sharing of the conditioning
stream, for the tiny demo config and a mid-size config (random weights, float32 CPU by default).

    python -m bench.bench_model                        # tiny + mid, CPU float32
    python -m bench.bench_model --quick                # tiny only, 1 repeat (smoke test)
    python -m bench.bench_model --configs mid --compile          # + torch.compile: compile time, step time
    python -m bench.bench_model --device cuda --full-size --dtype float16   # GPU: 576x320x16, full-size UNet

Configs (guidance on, so the UNet sees batch 2 = [uncond, cond]; Fc conditioning frames):
    tiny: the demo UNet (`tiny.TINY_UNET_CONFIG`, 32-32), 64x64 pixels (8x8 latents), 8 frames, Fc 4.
    mid:  block_out_channels 64-128-256, 1 layer per block (35 M params), text width 256, 256x256 pixels
          (32x32 latents), 8 frames, Fc 4. (2 layers per block, 51 M params, takes ~10 s per forward
          on one core of this machine: too slow for a benchmark that runs in minutes.)
    full: the ContinuitySeq-A UNet (320-640-1280-1280, 2.4 B params), 576x320 (72x40 latents), 16
          frames, Fc 8, text width 1024 (only with --full-size; needs a GPU in practice).
"shared": conditioning latents passed with batch 1 (the UNet computes the conditioning stream once and
broadcasts it; what the pipeline does). "dup": the same latents duplicated to batch 2 (the original's
`torch.cat([y] * 2)`). Both give the same noise prediction (max |diff| printed). The full chunk is
`denoise_chunk` (`--steps` DDIM steps) + `decode_latents` through the tiny VAE, same seed both ways.
Timing: shared and dup alternate; the figure is the fastest of `--repeats`; on CPU it is the process's
CPU time (robust on a machine shared with other work; with the default single intra-op thread it is
the compute time), on GPU the wall time after a synchronize.
Real-time factor (GPU line) = frames generated per second / output fps (16), UNet steps only.
"""

from __future__ import annotations

import time

import torch

from ._common import load, make_parser

CONFIGS = {
    "tiny": dict(unet={}, text_dim=32, height=64, width=64, frames=8, cond=4),
    "mid": dict(unet=dict(block_out_channels=[64, 128, 256], layers_per_block=1,
                          down_block_types=["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"],
                          up_block_types=["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
                          norm_num_groups=32, cross_attention_dim=256, attention_head_dim=32),
                text_dim=256, height=256, width=256, frames=8, cond=4),
    "full": dict(unet=None, text_dim=1024, height=320, width=576, frames=16, cond=8),
}


def make_unet(name: str, device, dtype):
    from continuityseq_stream.demo import tiny
    from continuityseq_stream.models import ContinuitySeqUNet

    spec = CONFIGS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = ContinuitySeqUNet() if spec["unet"] is None else tiny.make_unet(**spec["unet"])
    return _to(unet.eval(), device, dtype)


def _to(module, device, dtype):
    """Move (and cast only when not float32: diffusers warns about any dtype argument)."""
    return module.to(device) if dtype == torch.float32 else module.to(device, dtype)


def inputs(name: str, device, dtype, seed: int = 1):
    spec = CONFIGS[name]
    g = torch.Generator().manual_seed(seed)
    h, w = spec["height"] // 8, spec["width"] // 8
    x = torch.randn(2, 4, spec["frames"], h, w, generator=g)
    y = torch.randn(1, 4, spec["cond"], h, w, generator=g)
    e = torch.randn(2, 77, spec["text_dim"], generator=g)
    return x.to(device, dtype), y.to(device, dtype), e.to(device, dtype)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def clock(device):
    """CPU: this process's CPU time (with one intra-op thread that is the compute time, and it is not
    inflated by other work waiting for the same cores, as wall time is on a shared machine);
    GPU: wall time (after a synchronize)."""
    return time.process_time if torch.device(device).type == "cpu" else time.perf_counter


def time_calls(fn, repeats: int, device) -> float:
    fn()  # warm-up
    sync(device)
    times, now = [], clock(device)
    for _ in range(repeats):
        t0 = now()
        fn()
        sync(device)
        times.append(now() - t0)
    return min(times)


def forward_figures(name, unet, device, dtype, repeats) -> dict:
    x, y, e = inputs(name, device, dtype)
    t = torch.tensor(500, device=device)
    with torch.inference_mode():
        shared = lambda: unet(x, y, t, e)  # noqa: E731
        dup = lambda: unet(x, torch.cat([y] * 2), t, e)  # noqa: E731
        diff = (shared() - dup()).abs().max().item()
        ts, td = [], []
        for _ in range(repeats):  # interleave, so load changes hit both alike
            ts.append(time_calls(shared, 1, device))
            td.append(time_calls(dup, 1, device))
    return {"shared": min(ts), "dup": min(td), "diff": diff}


def chunk_figures(name, unet, device, dtype, steps, repeats) -> dict:
    """One full chunk (denoise + decode) through ContinuitySeqPipeline with the tiny VAE/text encoder."""
    from continuityseq_stream.demo import tiny
    from continuityseq_stream.pipeline.pipeline import ContinuitySeqPipeline

    spec = CONFIGS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        comps = tiny.get_dummy_components(0)
        comps["text_encoder"] = tiny.make_text_encoder(len(comps["tokenizer"]), spec["text_dim"])
    comps["unet"] = unet

    class Duplicated(ContinuitySeqPipeline):
        """The original's way: conditioning duplicated to the batch of the noisy latents."""

        def _unet(self, x, y, t, text):
            return super()._unet(x, y.expand(x.shape[0], *y.shape[1:]).contiguous(), t, text)

    pipes = {}
    for label, cls in (("shared", ContinuitySeqPipeline), ("dup", Duplicated)):
        pipe = cls(**comps).to(device)
        _to(pipe.vae, device, dtype)
        _to(pipe.text_encoder, device, dtype)
        pipe.set_progress_bar_config(disable=True)
        pipes[label] = pipe
    _, y, _ = inputs(name, device, dtype)
    embeds = pipes["shared"].encode_prompt("a red ball bouncing", None, True)

    def chunk(label):
        pipe = pipes[label]
        lat = pipe.denoise_chunk(y, embeds, spec["frames"], steps, 7.5, torch.Generator().manual_seed(3))
        return pipe.decode_latents(lat)

    diff = (chunk("shared").float() - chunk("dup").float()).abs().max().item()  # also the warm-up
    ts, td, now = [], [], clock(device)
    for _ in range(repeats):
        for label, out in (("shared", ts), ("dup", td)):
            t0 = now()
            chunk(label)
            sync(device)
            out.append(now() - t0)
    return {"shared": min(ts), "dup": min(td), "diff": diff}


def compile_figures(name, unet, device, dtype, repeats) -> str:
    x, y, e = inputs(name, device, dtype)
    t = torch.tensor(500, device=device)
    with torch.inference_mode():
        eager = time_calls(lambda: unet(x, y, t, e), repeats, device)
        compiled = torch.compile(unet)
        t0 = time.perf_counter()  # wall: compilation runs the C++ compiler in subprocesses
        out = compiled(x, y, t, e)
        sync(device)
        first = time.perf_counter() - t0
        diff = (out - unet(x, y, t, e)).abs().max().item()
        steady = time_calls(lambda: compiled(x, y, t, e), repeats, device)
    return (f"{name} torch.compile: first call (compile) {first:.1f}s, step {steady * 1e3:.0f} ms vs eager "
            f"{eager * 1e3:.0f} ms ({eager / steady:.2f}x), max|diff| {diff:.1e}")


def main(argv=None) -> None:
    p = make_parser(__doc__, quick="tiny only, 1 repeat, 2 steps", threads=1, threads_help="torch intra-op threads (CPU)")
    p.add_argument("--configs", default="tiny,mid", help="comma list of tiny, mid")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--full-size", action="store_true", help="only the full-size UNet at 576x320x16 (GPU)")
    p.add_argument("--steps", type=int, default=3, help="DDIM steps of the full-chunk figure")
    p.add_argument("--full-steps", type=int, default=25, help="steps per chunk for the real-time factor")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile on each config")
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.repeats, args.steps = "tiny", 1, 2
    torch.set_num_threads(args.threads)  # this script's own process
    dtype = getattr(torch, args.dtype)
    where = f"{args.device} {args.dtype}" + (f", {args.threads} thread(s)" if args.device == "cpu" else "")
    if args.full_size:
        unet = make_unet("full", args.device, dtype)
        f = forward_figures("full", unet, args.device, dtype, args.repeats)
        fps_gen = CONFIGS["full"]["frames"] / (args.full_steps * f["shared"])
        print(f"model full 576x320x16 (Fc 8, CFG batch 2, {where}): step {f['shared']:.3f}s shared / {f['dup']:.3f}s "
              f"dup ({f['dup'] / f['shared']:.2f}x, max|diff| {f['diff']:.1e}); {args.full_steps} steps/chunk -> "
              f"{fps_gen:.2f} frames/s, real-time factor {fps_gen / 16:.3f} at 16 fps")
        return
    what = "CPU seconds of this process" if torch.device(args.device).type == "cpu" else "wall seconds"
    print(f"model ({where}; CFG on; min of {args.repeats}, {what}; {load()})")
    for name in args.configs.split(","):
        spec = CONFIGS[name]
        unet = make_unet(name, args.device, dtype)
        f = forward_figures(name, unet, args.device, dtype, args.repeats)
        c = chunk_figures(name, unet, args.device, dtype, args.steps, args.repeats)
        print(f"{name:>4} {spec['width']}x{spec['height']}x{spec['frames']} Fc {spec['cond']}: forward "
              f"{f['shared'] * 1e3:.0f} ms shared / {f['dup'] * 1e3:.0f} ms dup = {f['dup'] / f['shared']:.2f}x "
              f"(max|diff| {f['diff']:.1e}); chunk ({args.steps} steps + decode) {c['shared']:.2f}s / {c['dup']:.2f}s "
              f"= {c['dup'] / c['shared']:.2f}x (max|diff| {c['diff']:.1e})")
        if args.compile:
            print(compile_figures(name, unet, args.device, dtype, args.repeats))


if __name__ == "__main__":
    main()
