"""A chunk source for test_threads.py, run in the producer process: each chunk's prompt is a JSON
report of what that process looks like to torch. It imports torch at its top, as the real source's
module (session.py) does, so the report says whether anything imported torch there before it."""

import json
import os
import sys

TORCH_BEFORE = "torch" in sys.modules  # imported by the spawn machinery or the arguments' modules?
WAIT_POLICY_AT_IMPORT = os.environ.get("OMP_WAIT_POLICY")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from continuityseq_stream.chunk import Chunk  # noqa: E402


def probe_stream(config, *, schedule=None, updates=None, abort=None):
    """One chunk of black frames whose prompt carries the report."""
    report = {"torch_before": TORCH_BEFORE, "wait_policy": WAIT_POLICY_AT_IMPORT,
              "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    frames = np.zeros((config.num_frames, config.height, config.width, 3), np.uint8)
    yield Chunk(frames=frames, index=0, first_frame=0, conditioning_frames=1, prompt=json.dumps(report))
