"""Continuity figures of a ContinuitySeq model on the synthetic-motion prompts (prints a table).

    python -m bench.bench_continuity                      # the shipped trained demo model
    python -m bench.bench_continuity --model FOLDER --chunks 50 --drift-chunks 200 --json out.json

For each prompt it streams `--chunks` chunks from a rendered first frame (`demo_model.demo_init_frame`),
tracks the object (`continuityseq_stream.demo.metrics`) and reports prompt adherence (fraction of chunks
whose object has the asked colour and moves the asked way), the seam ratio (velocity error across
chunk boundaries / inside chunks; 1 = seamless) and the frame-difference ratio. The first prompt runs
`--drift-chunks` chunks for size/colour drift. The ablation is the same model with every chunk's
conditioning latents replaced by Gaussian noise (so nothing carries over between chunks).
`--strip PNG` saves a frame strip (one row per prompt, chunk boundaries marked).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from continuityseq_stream.demo import metrics, trained as demo_model  # noqa: E402
from continuityseq_stream.pipeline.conditioning import UniformConditioning  # noqa: E402
from continuityseq_stream.pipeline.pipeline import ContinuitySeqPipeline  # noqa: E402
from ._common import make_parser  # noqa: E402


class NoiseConditioningPipeline(ContinuitySeqPipeline):
    """Ablation: the UNet sees N(0, 1) noise instead of the previous chunk's clean latents."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler) -> None:
        super().__init__(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self._noise = torch.Generator().manual_seed(1234)

    def denoise_chunk(self, conditioning, *args, **kwargs):
        noise = torch.randn(conditioning.shape, generator=self._noise).to(conditioning.device, conditioning.dtype)
        return super().denoise_chunk(noise, *args, **kwargs)


def generate(pipe, prompt: str, chunks: int, seed: int, settings: dict) -> np.ndarray:
    """uint8 frames `[chunks * F, H, W, 3]`, k uniform in the demo's [CN, CX] (seeded)."""
    selector = UniformConditioning(settings["min_conditioning_frames"], settings["max_conditioning_frames"],
                                   random.Random(seed))
    frames = [c.frames for c in pipe.stream(
        prompt, image=demo_model.demo_init_frame(prompt, seed, settings["width"]), times=chunks,
        num_frames=settings["num_frames"], height=settings["height"], width=settings["width"],
        guidance_scale=settings["guidance_scale"], num_inference_steps=settings["num_inference_steps"],
        selector=selector, generator=torch.Generator().manual_seed(seed))]
    return np.concatenate(frames)


def evaluate(pipe, prompts, chunks, drift_chunks, seed, settings, label, log) -> dict:
    rows, videos, t0, n = [], {}, time.monotonic(), 0
    for i, prompt in enumerate(prompts):
        count = max(chunks, drift_chunks) if i == 0 and drift_chunks else chunks
        video = generate(pipe, prompt, count, seed + i, settings)
        n += count
        videos[prompt] = video
        f = settings["num_frames"]
        head = video[: chunks * f]
        a = metrics.adherence(head, f, prompt)
        s = metrics.seam_stats(head, f)
        d = metrics.frame_difference_stats(head, f)
        row = {"prompt": prompt, "chunks": chunks, "colour_and_direction": a["colour_and_direction"],
               "colour": a["colour"], "direction": a["direction"], "shape": a["shape"], **s, **d}
        if i == 0 and drift_chunks:
            dr = metrics.drift(video, f, window=10)
            row["drift"] = {k: v for k, v in dr.items() if k != "series"}
            row["drift"]["area_series"] = dr["series"]["area"]
        rows.append(row)
        log(f"[{label}] {prompt}: colour+direction {a['colour_and_direction']:.2f}, seam ratio "
            f"{s['seam_ratio']:.2f}, frame-diff ratio {d['frame_diff_ratio']:.2f} ({time.monotonic() - t0:.0f}s)")
    pooled = {k: float(np.mean([r[k] for r in rows])) for k in
              ("colour_and_direction", "colour", "direction", "shape", "seam_ratio", "frame_diff_ratio",
               "boundary_velocity_error", "inside_velocity_error", "tracked_fraction")}
    pooled["seconds_per_chunk"] = (time.monotonic() - t0) / max(1, n)
    return {"label": label, "per_prompt": rows, "mean": pooled, "videos": videos}


def save_strip(videos: dict, path: str, frames: int, chunk: int, scale: int = 3) -> None:
    """One row per prompt, `frames` frames, a dark line before every chunk's first frame."""
    from PIL import Image

    rows = []
    for video in videos.values():
        tiles = []
        for t in range(min(frames, len(video))):
            tile = np.kron(video[t], np.ones((scale, scale, 1), dtype=np.uint8))
            if t and t % chunk == 0:
                tiles.append(np.full((tile.shape[0], 2, 3), 255, np.uint8))
            tiles.append(tile)
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.concatenate(rows)).save(path, optimize=True)


def main(argv=None) -> int:
    p = make_parser(__doc__, quick=None, threads=2)
    p.add_argument("--model", default=None, help="model folder (default: the shipped trained demo)")
    p.add_argument("--chunks", type=int, default=50)
    p.add_argument("--drift-chunks", type=int, default=200, help="chunks of the first prompt for drift (0: off)")
    p.add_argument("--prompts", nargs="*", default=list(demo_model.EXAMPLE_PROMPTS))
    p.add_argument("--guidance", type=float, default=demo_model.DEMO_SETTINGS["guidance_scale"])
    p.add_argument("--steps", type=int, default=demo_model.DEMO_SETTINGS["num_inference_steps"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ablation", action="store_true")
    p.add_argument("--strip", default=None, help="save a frame strip PNG of the trained model here")
    p.add_argument("--strip-frames", type=int, default=16)
    p.add_argument("--json", default=None, help="write all figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    folder = args.model or demo_model.trained_demo_path()
    if folder is None:
        log("no trained demo weights in continuityseq_stream/data/demo; pass --model FOLDER")
        return 2
    settings = {**demo_model.DEMO_SETTINGS, "guidance_scale": args.guidance, "num_inference_steps": args.steps}
    pipe = ContinuitySeqPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    results = [evaluate(pipe, args.prompts, args.chunks, args.drift_chunks, args.seed, settings, "trained", log)]
    if not args.no_ablation:
        ablation = NoiseConditioningPipeline(**pipe.components)
        ablation.set_progress_bar_config(disable=True)
        results.append(evaluate(ablation, args.prompts, args.chunks, 0, args.seed, settings, "noise-conditioning", log))
    if args.strip:
        save_strip(results[0]["videos"], args.strip, args.strip_frames, settings["num_frames"])

    print(f"model: {folder}")
    print(f"settings: {settings}; {args.chunks} chunks x {len(args.prompts)} prompts, seed {args.seed}")
    print(f"{'model':<20}{'colour+dir':>11}{'colour':>8}{'dir':>6}{'shape':>7}{'seam ratio':>12}"
          f"{'v err b/i (px)':>16}{'fdiff ratio':>13}{'s/chunk':>9}")
    for r in results:
        m = r["mean"]
        print(f"{r['label']:<20}{m['colour_and_direction']:>11.2f}{m['colour']:>8.2f}{m['direction']:>6.2f}"
              f"{m['shape']:>7.2f}{m['seam_ratio']:>12.2f}"
              f"{m['boundary_velocity_error']:>8.2f}/{m['inside_velocity_error']:<7.2f}"
              f"{m['frame_diff_ratio']:>13.2f}{m['seconds_per_chunk']:>9.2f}")
    drift = results[0]["per_prompt"][0].get("drift")
    if drift:
        print(f"drift over {drift['chunks']} chunks ({args.prompts[0]!r}): area {drift['area_first']:.0f} -> "
              f"{drift['area_last']:.0f} px ({100 * drift['area_change']:+.0f} %), colour shift "
              f"{drift['colour_shift']:.1f} RGB, background shift {drift['background_shift']:.1f} RGB, "
              f"object found in {100 * drift['found_chunks']:.0f} % of chunks")
    if args.json:
        out = [{k: v for k, v in r.items() if k != "videos"} for r in results]
        with open(args.json, "w") as fh:
            json.dump({"model": str(folder), "settings": settings, "results": out}, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
