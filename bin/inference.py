#!/usr/bin/env python3
"""Drop-in for the original ContinuitySeq `inference.py`: takes its command lines unchanged, e.g.

    inference.py --model b-f/ContinuitySeq-A --prompt "an astronaut is walking on the moon" \
      --model-2d stabilityai/stable-diffusion-2-1 --num-frames 16 --width 576 --height 320 --times 1 --sdp

and runs `continuityseq-stream run` with them (the mp4 is written while chunks arrive).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from continuityseq_stream.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["run", *sys.argv[1:]], prog_name="inference.py")
