"""Decode chunk k while chunk k+1 denoises: does it help here? Sequential vs two-stage loop.

    python -m bench.bench_overlap              # demo model 128x128x8, 6 steps, 6 chunks, 1 and 2 threads
    python -m bench.bench_overlap --quick      # 64x64x4, 2 steps, 3 chunks, 1 thread

Both loops call the pipeline's named steps (`denoise_chunk`, `decode_latents`, `to_uint8`) with the
same seed and the same conditioning policy (k = 4 tail latents), so they must give identical frames
(checked, printed as "identical"). sequential: denoise k, decode k, denoise k+1, ... two-stage: one
worker thread decodes chunk k while this thread denoises chunk k+1 (torch releases the GIL inside its
kernels, so the stages run on different cores when there are free cores). With `--threads N` each
stage may use N intra-op threads; on a 2-core machine already saturated by the denoiser the decode
has nowhere to run, so the gain is expected only when cores are idle (or on a GPU, with a second
CUDA stream). Prints one line per thread count: seconds for the chunks and the speed-up.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ._common import load, make_parser, median


def setup(args):
    from continuityseq_stream.pipeline.pipeline import ContinuitySeqPipeline

    pipe = ContinuitySeqPipeline.from_pretrained("demo-random")
    pipe.set_progress_bar_config(disable=True)
    pixels = torch.zeros(1, 3, args.height, args.width)
    cond = pipe.prepare_conditioning(pixels)
    embeds = pipe.encode_prompt("a red ball bouncing", None, True)
    return pipe, cond, embeds


def sequential(pipe, cond, embeds, args) -> list[np.ndarray]:
    g, out = torch.Generator().manual_seed(5), []
    for _ in range(args.chunks):
        lat = pipe.denoise_chunk(cond, embeds, args.frames, args.steps, 7.5, g)
        cond = lat[:, :, -4:].clone()
        out.append(pipe.to_uint8(pipe.decode_latents(lat)))
    return out


def two_stage(pipe, cond, embeds, args) -> list[np.ndarray]:
    g, out, pending = torch.Generator().manual_seed(5), [], None
    with ThreadPoolExecutor(1) as pool:
        for _ in range(args.chunks):
            lat = pipe.denoise_chunk(cond, embeds, args.frames, args.steps, 7.5, g)
            cond = lat[:, :, -4:].clone()
            if pending is not None:
                out.append(pending.result())
            pending = pool.submit(lambda z: pipe.to_uint8(pipe.decode_latents(z)), lat)
        out.append(pending.result())
    return out


def main(argv=None) -> None:
    p = make_parser(__doc__, quick="a tiny run (smoke test)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--chunks", type=int, default=6)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:
        args.width = args.height = 64
        args.frames, args.steps, args.chunks, args.threads, args.repeats = 4, 2, 3, "1", 1
    pipe, cond, embeds = setup(args)
    saved = torch.get_num_threads()
    try:
        for n in (int(v) for v in args.threads.split(",")):
            torch.set_num_threads(n)
            # decode-only time, for scale
            lat = pipe.denoise_chunk(cond, embeds, args.frames, args.steps, 7.5, torch.Generator().manual_seed(1))
            t0 = time.perf_counter()
            pipe.to_uint8(pipe.decode_latents(lat))
            dec = time.perf_counter() - t0
            ts, to, same = [], [], True
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                a = sequential(pipe, cond, embeds, args)
                ts.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                b = two_stage(pipe, cond, embeds, args)
                to.append(time.perf_counter() - t0)
                same = same and all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
            s, o = median(ts), median(to)
            print(f"overlap ({n} thread(s)): {args.chunks} chunks sequential {s:.2f}s, decode-while-denoising "
                  f"{o:.2f}s = {s / o:.2f}x; decode {dec:.2f}s/chunk; frames {'identical' if same else 'DIFFER'} "
                  f"(demo model {args.width}x{args.height}x{args.frames}, {args.steps} steps, median of {args.repeats}; "
                  f"{load()})")
    finally:
        torch.set_num_threads(saved)


if __name__ == "__main__":
    main()
