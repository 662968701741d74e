"""Model names -> local folders: the one place that interprets the demo names and hub ids.

`-m/--model`, `-MP/--model-2d` and `--upscaler` all take a local diffusers-layout folder, a hub id
(`owner/name`, fetched or taken from the HF cache) or a demo name. What a demo name means depends
on the role: for the video model "demo"/"demo-trained" is the trained demo shipped in the package
and "demo-random" the tiny random-weight model; for the 2d model and the upscaler "demo" is a tiny
random one. Errors name the argument (`{model}`, ...) so the CLI spells its own flag.
"""

from __future__ import annotations

import os
from typing import Optional, Union

from ..config import HUB_ID
from ..errors import CheckpointError

__all__ = ["TRAINED_DEMO_NAMES", "RANDOM_DEMO_NAME", "DEMO_NAME", "ROLES", "demo_kind",
           "is_trained_demo", "resolve_pretrained_path"]

DEMO_NAME = "demo"
TRAINED_DEMO_NAMES = ("demo", "demo-trained")
RANDOM_DEMO_NAME = "demo-random"

# role -> the argument that names its model
ROLES = {"video": "model", "2d": "model_2d", "upscaler": "upscaler"}


def demo_kind(name: object, role: str = "video") -> Optional[str]:
    """Which built-in model `name` means in `role`: "trained", "random", "2d", "upscaler" or None."""
    name = str(name)
    if role == "video":
        return "trained" if name in TRAINED_DEMO_NAMES else "random" if name == RANDOM_DEMO_NAME else None
    return role if name == DEMO_NAME else None


def is_trained_demo(name: object) -> bool:
    """True when the video model `name` is the trained demo (it has its own settings and first frame)."""
    return demo_kind(name) == "trained"


def _demo_folder(kind: str, argument: str) -> str:
    """Local folder of the built-in model `kind` (tiny random ones are built on first use)."""
    if kind == "trained":
        from ..demo.trained import trained_demo_path

        path = trained_demo_path()
        if path is None:
            raise CheckpointError(f"{{{argument}}}: the trained demo weights are not in this installation "
                                  "(continuityseq_stream/data/demo); use 'demo-random' (random weights) or a "
                                  "model folder", names=(argument,))
        return str(path)
    from ..demo import tiny

    return str({"random": tiny.demo_model_path, "2d": tiny.demo_2d_model_path,
                "upscaler": tiny.demo_upscaler_path}[kind]())


def resolve_pretrained_path(path_or_repo_id: Union[str, os.PathLike], demo: str = "video") -> str:
    """A local folder, a demo name, or a hub id -> local folder, for the model of role `demo`
    ("video", "2d" or "upscaler").

    Raises CheckpointError with one line naming the role's argument when nothing usable is found
    (an unknown path, or a hub id that is not cached while offline).
    """
    name = str(path_or_repo_id)
    argument = ROLES[demo]
    kind = demo_kind(name, demo)
    if kind is not None:
        return _demo_folder(kind, argument)
    if os.path.isdir(name):
        return name
    if os.path.exists(name):
        raise CheckpointError(f"{{{argument}}}: {name!r} is a file; pass a diffusers-layout model folder or a hub id",
                              names=(argument,))
    if not HUB_ID.match(name) or name.startswith((".", "/", "~")):
        raise CheckpointError(f"{{{argument}}}: {name!r} does not exist; pass a local diffusers-layout folder, a "
                              "hub id such as b-f/ContinuitySeq-A, or 'demo'", names=(argument,))
    return _snapshot(name, argument)


def _snapshot(repo_id: str, argument: str) -> str:
    """The hub repo's local snapshot (from the cache when offline), or one CheckpointError line."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id)
    except Exception as e:  # offline, unknown repo, no network: all mean "cannot get it"
        raise CheckpointError(
            f"{{{argument}}}: cannot get {repo_id!r} from the Hugging Face hub ({type(e).__name__}); pass a "
            f"local folder (e.g. one made with `hf download {repo_id} --local-dir DIR`) or 'demo'",
            names=(argument,)) from None
