"""`--original-postprocess`: the original `inference.py`'s look, for users who want it.

What the original (REF-A HEAD, tests/golden/ARCHITECTURE.md §9.6) does to the decoded frames before writing:

1. clamp to [-1, 1], `(x + 1) * 127.5`, then **truncate** to uint8 (`.byte()`): this project
   rounds instead (`sources.pixels_to_uint8`), so its frames are half an LSB brighter on average;
2. per frame and per colour channel, OpenCV CLAHE with clip limit 1.2 on a 1x1 tile grid
   (a contrast-limited histogram equalisation of the whole channel);
3. a "gamma" of 0.98 applied to the 0..255 values themselves (`v ** 0.98`, not to v / 255), which
   darkens everything: 255 becomes 228; then clipped to [0, 255] and truncated to uint8.

Every step works on one frame at a time, so it fits a stream. Not applied: the original's
`average_contrast` (defined in its HEAD but not called there; an earlier commit ran it): it scales
each frame to the average contrast of the *whole* video, which a never-ending stream does not have.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["CLAHE_CLIP_LIMIT", "CLAHE_TILES", "GAMMA", "pixels_to_uint8_truncated", "clahe_gamma",
           "original_postprocess"]

#: the original's settings (its `enhance_contrast_clahe_4d` defaults)
CLAHE_CLIP_LIMIT = 1.2
CLAHE_TILES = (1, 1)
GAMMA = 0.98


def pixels_to_uint8_truncated(pixels: torch.Tensor) -> np.ndarray:
    """`[F, 3, H, W]` in about [-1, 1] -> uint8 `[F, H, W, 3]`: clamp, (x + 1) * 127.5, truncated
    toward zero as the original's `.byte()` (not rounded)."""
    x = (pixels.detach().float().clamp(-1, 1) + 1.0) * 127.5
    return np.ascontiguousarray(x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())


def clahe_gamma(frames: np.ndarray, clip_limit: float = CLAHE_CLIP_LIMIT, tiles: tuple = CLAHE_TILES,
                gamma: float = GAMMA) -> np.ndarray:
    """uint8 `[F, H, W, 3]` -> a new uint8 array: CLAHE per frame and channel, then `v ** gamma` on the
    0..255 values, clipped to [0, 255] and truncated to uint8 (the original's order and rounding)."""
    import cv2

    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tuple(tiles))
    out = np.empty_like(frames)
    for f in range(frames.shape[0]):
        for c in range(frames.shape[3]):
            # CLAHE wants one contiguous single-channel image
            equalised = clahe.apply(np.ascontiguousarray(frames[f, :, :, c]))
            out[f, :, :, c] = np.clip(np.power(equalised, gamma, dtype=np.float64), 0, 255).astype(np.uint8)
    return out


def original_postprocess(pixels: torch.Tensor) -> np.ndarray:
    """Decoded pixels `[F, 3, H, W]` -> uint8 `[F, H, W, 3]` as the original wrote them (before its
    mp4v writer and ffmpeg re-encode): truncation, CLAHE, gamma."""
    return clahe_gamma(pixels_to_uint8_truncated(pixels))
