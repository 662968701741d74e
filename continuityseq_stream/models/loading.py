"""Checkpoint resolution, reading, variant detection and strict loading of `ContinuitySeqUNet`.

Why not diffusers' `from_pretrained`: it would silently skip or randomly initialise mismatching
keys. Here a checkpoint either loads completely (every key and shape checked) or fails with one
`CheckpointError` that names the missing and unexpected keys.

Memory: the model is built on the meta device and the tensors are assigned into it
(`load_state_dict(assign=True)`), one converted tensor at a time from an mmapped file, so a 4.8 GB
checkpoint is never held twice in RAM. A pickled `.bin` is only ever read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..config import HUB_ID
from ..errors import CheckpointError, ConfigError
from .variants import RESNET_NAMES_B, VARIANTS

SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
BIN_NAME = "diffusion_pytorch_model.bin"
CONFIG_NAME = "config.json"

# Fields that configs written by diffusers' UNet3DConditionModel may carry; harmless at these values.
_IGNORED_CONFIG_FIELDS = {"num_attention_heads": None, "time_cond_proj_dim": None}


# ---------------------------------------------------------------------------------------------- detection
def detect_variant(keys: Iterable[str]) -> str:
    """Variant of a state dict from its key names alone (tests/golden/ARCHITECTURE.md §8.1).

    Raises `CheckpointError` when the keys belong to no ContinuitySeq UNet variant.
    """
    keys = set(keys)
    if any(k.startswith("conv_in.conditioning_block.") for k in keys):
        return "A-prev"
    if "hidden_time_embedding.linear_1.weight" in keys:
        return "B-init" if any(k.endswith(".conditioning_proj.weight") for k in keys) else "B-HEAD"
    if "time_embedding.linear_1.weight" in keys and "conv_in.spatial_conv.weight" in keys:
        if "conditioning_in.gamma.0.weight" in keys:
            return "A-HEAD"
        # REF-A before the A-HEAD change with use_conditioning_norm=false: no conditioning blocks
        if "conditioning_time_embedding.linear_1.weight" not in keys:
            return "A-prev"
    examples = ", ".join(sorted(keys)[:5]) or "(no keys)"
    raise CheckpointError(
        f"the checkpoint's {len(keys)} keys match no ContinuitySeq UNet variant ({', '.join(VARIANTS)}): "
        f"expected e.g. 'conv_in.spatial_conv.weight' with 'time_embedding.linear_1.weight' or "
        f"'hidden_time_embedding.linear_1.weight'; first keys found: {examples}")


def _flags_from_keys(keys: set[str]) -> dict:
    """REF-A `use_*` flags implied by the keys (used when config.json does not state them)."""
    return {
        "use_conditioning_norm": any(".conditioning_block." in k for k in keys),
        "use_temp_conditioning_transformer": any(".temp_conditioning_attentions." in k for k in keys),
    }


def _rename_legacy(keys: Iterable[str]) -> dict[str, str]:
    """Map model key -> checkpoint key. REF-A commits 9a34956..de3f726 stored the temporal-conditioning
    transformers as `conditioning_attentions` (§7.4); rename them like the reference's `convert` helper."""
    keys = list(keys)
    if any(".temp_conditioning_attentions." in k for k in keys):
        return {k: k for k in keys}
    return {k.replace(".conditioning_attentions.", ".temp_conditioning_attentions."): k for k in keys}


def convert_ref_a_head_to_ref_b(state_dict: Mapping[str, torch.Tensor],
                                extra: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """REF-A-HEAD state dict under REF-B key names (drops `conditioning_in`, renames `time_embedding` and
    the resnet norms/projections); `extra` adds B-init's `conditioning_norm3`/`conditioning_proj` tensors.
    This is the golden README's recipe for the B weights; the math of shared tensors is identical."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("conditioning_in."):
            continue
        if key.startswith("time_embedding."):
            key = "hidden_" + key
        parts = key.split(".")
        if "resnets" in parts:
            i = parts.index("resnets") + 2  # the module right after resnets.<j>
            parts[i] = RESNET_NAMES_B.get(parts[i], parts[i])
            key = ".".join(parts)
        out[key] = value
    out.update(extra or {})
    return out


# ---------------------------------------------------------------------------------------------- files
def resolve_folder(path_or_repo_id, subfolder: str | None = "unet") -> Path:
    """Local folder holding config.json + weights, downloading from the hub for a repo id."""
    path = Path(str(path_or_repo_id)).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{str(path)!r} is a file; pass the model folder (or its hub repo id)")
        folder = path / subfolder if subfolder else path
        if not folder.is_dir():
            raise CheckpointError(f"{str(path)!r} has no {subfolder!r} subfolder; pass subfolder=None "
                                  f"if the folder itself holds config.json and the weights")
        return folder
    if not HUB_ID.match(str(path_or_repo_id)):
        raise CheckpointError(f"{str(path_or_repo_id)!r} is neither an existing folder nor a hub repo id "
                              f"('owner/name'); pass a local model folder")
    return _download(str(path_or_repo_id), subfolder)


def _download(repo_id: str, subfolder: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    hint = (f"pass a local folder instead (e.g. made by `hf download {repo_id} --local-dir DIR` on a machine "
            f"with network access), or unset HF_HUB_OFFLINE")
    try:
        config = Path(hf_hub_download(repo_id, CONFIG_NAME, subfolder=subfolder))
        for name in (SAFETENSORS_NAME, BIN_NAME):
            try:
                hf_hub_download(repo_id, name, subfolder=subfolder)
                return config.parent
            except LocalEntryNotFoundError:
                raise
            except EntryNotFoundError:
                continue
    except Exception as exc:  # offline, unknown repo, network or auth failure: all end the same way
        raise CheckpointError(f"could not get {repo_id!r} (subfolder {subfolder!r}) from the Hugging Face "
                              f"Hub: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                              f"{hint}") from exc
    raise CheckpointError(f"hub repo {repo_id!r} (subfolder {subfolder!r}) has neither {SAFETENSORS_NAME} "
                          f"nor {BIN_NAME}")


def weight_file(folder: Path) -> Path:
    """The folder's weight file: safetensors preferred, else the pickled .bin."""
    for name in (SAFETENSORS_NAME, BIN_NAME):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{str(folder)!r} has neither {SAFETENSORS_NAME} nor {BIN_NAME}")


def read_config(path: Path, cls) -> dict:
    """Constructor kwargs from a config.json written by the reference or by `save_pretrained`."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{str(path)!r} is missing; a UNet folder needs config.json") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r} is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{str(path)!r} does not hold a JSON object")
    known = set(inspect.signature(cls.__init__).parameters) - {"self"}
    config = {}
    for key, value in raw.items():
        if key.startswith("_"):  # _class_name, _diffusers_version, ...
            continue
        if key in known:
            config[key] = value
        elif key in _IGNORED_CONFIG_FIELDS and value == _IGNORED_CONFIG_FIELDS[key]:
            continue
        else:
            raise ConfigError(f"{str(path)!r} has the option {key}={value!r}, which ContinuitySeqUNet does not "
                              f"know; known options: {', '.join(sorted(known))}")
    return config


class _Checkpoint:
    """Lazy view of a weight file: key names and shapes without reading the data."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                self._handle = safe_open(str(path), framework="pt", device="cpu")
                self.shapes = {k: tuple(self._handle.get_slice(k).get_shape()) for k in self._handle.keys()}
                self.dtypes = {}
            else:
                self._tensors = _torch_load(path)
                self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
        except CheckpointError:
            raise
        except Exception as exc:  # corrupted/truncated file, wrong format
            raise CheckpointError(f"cannot read {str(path)!r} ({type(exc).__name__}: {exc}); the file is "
                                  f"corrupted, truncated or not a weight file — download it again") from exc

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._handle.get_tensor(key) if self._handle is not None else self._tensors[key]
        except Exception as exc:
            raise CheckpointError(f"cannot read tensor {key!r} from {str(self.path)!r} ({exc}); the file is "
                                  f"corrupted or truncated") from exc


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """Read a pickled state dict with the restricted unpickler only (weights_only=True), mmapped."""
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # legacy (pre-zip) pickles cannot be mmapped: read them plainly
            raise
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{str(path)!r} does not hold a state dict of tensors")
    return sd


def load_state_dict_file(path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Whole state dict of a .safetensors or .bin file (small files, tests), optionally cast."""
    ckpt = _Checkpoint(Path(path))
    return {k: (ckpt.get(k) if dtype is None else ckpt.get(k).to(dtype)) for k in ckpt.shapes}


# ---------------------------------------------------------------------------------------------- strict check
def check_keys(expected: Mapping[str, tuple], found: Mapping[str, tuple], what: str) -> None:
    """Raise one CheckpointError listing missing/unexpected keys and shape mismatches (a few of each)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:4])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:4])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (e.g. " + ", ".join(
            f"{k}: checkpoint {list(found[k])} vs model {list(expected[k])}" for k in shapes[:3]) + ")")
    raise CheckpointError(f"{what}: " + "; ".join(parts))


# ---------------------------------------------------------------------------------------------- load / save
def load_unet(cls, path_or_repo_id, subfolder: str | None = "unet", torch_dtype: torch.dtype | None = None,
              device=None, variant: str | None = None, **kwargs):
    """Build `cls` from a folder or hub id, strictly, without holding the weights twice.

    `torch_dtype`: dtype in memory (default: float32 — torch's default dtype — whatever is on disk).
    `device`: where the parameters go (each tensor is moved as it is read). `variant`: force a variant
    (it must agree with the keys). Returns the model in eval mode.
    """
    if kwargs:
        raise ConfigError(f"from_pretrained got unknown options {sorted(kwargs)}; it accepts subfolder, "
                          f"torch_dtype, device and variant")
    if variant is not None and variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r} is unknown; use one of {', '.join(VARIANTS)}")
    dtype = torch_dtype or torch.get_default_dtype()
    folder = resolve_folder(path_or_repo_id, subfolder)
    config = read_config(folder / CONFIG_NAME, cls)
    ckpt = _Checkpoint(weight_file(folder))
    model_to_file = _rename_legacy(ckpt.shapes)
    found = {k: ckpt.shapes[v] for k, v in model_to_file.items()}

    detected = detect_variant(found)
    for source, wanted in (("config.json", config.get("variant")), ("the variant argument", variant)):
        if wanted is not None and wanted != detected:
            raise CheckpointError(f"{source} says variant {wanted!r} but the keys of {str(ckpt.path)!r} are "
                                  f"those of {detected!r}")
    config["variant"] = detected
    if detected.startswith("A"):
        for flag, value in _flags_from_keys(set(found)).items():
            config.setdefault(flag, value)

    with torch.device("meta"):
        model = cls(**config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_keys(expected, found, f"{str(ckpt.path)!r} does not match ContinuitySeq UNet variant {detected!r}")

    state = {}
    for key, file_key in model_to_file.items():
        state[key] = ckpt.get(file_key).to(device=device or "cpu", dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    del state
    return model.eval()


def save_unet(model, save_directory, dtype: torch.dtype | None = None, safe_serialization: bool = True,
              **kwargs) -> None:
    """Write config.json and the weights (safetensors, or a weights-only-loadable .bin) to a folder.

    A weight file of the other format in that folder is removed, so the folder never holds two
    different checkpoints (the loader prefers safetensors).
    """
    if kwargs:
        raise ConfigError(f"save_pretrained got unknown options {sorted(kwargs)}; it accepts dtype and "
                          f"safe_serialization")
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    state = {k: v.detach().to(device="cpu", dtype=dtype or v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    target, other = (SAFETENSORS_NAME, BIN_NAME) if safe_serialization else (BIN_NAME, SAFETENSORS_NAME)
    if safe_serialization:
        from safetensors.torch import save_file

        save_file(state, str(folder / target), metadata={"format": "pt"})
    else:
        torch.save(state, str(folder / target))
    (folder / other).unlink(missing_ok=True)


__all__: list[str] = ["detect_variant", "convert_ref_a_head_to_ref_b", "load_state_dict_file", "load_unet",
                      "save_unet", "resolve_folder", "weight_file", "read_config", "check_keys"]
