"""Shared helpers of the UNet tests: golden folders, the tiny config and golden-weight checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from continuityseq_stream.models import convert_ref_a_head_to_ref_b, load_state_dict_file

GOLDEN = Path(__file__).parent / "golden"
FOLDERS = {"A-prev": "ref_a_prev", "A-HEAD": "ref_a_head", "B-init": "ref_b_init", "B-HEAD": "ref_b_head"}
CASES = ("a_c1_f4", "b_c3_f4", "c_cfg_b2_c2_f4", "c2_b2_c2_f4_distinct", "d_odd_7x5_c2_f3", "e_c4_f4_no_pad",
         "f_c6_f4_more_cond", "g_c2_f1_single_frame", "h_small_c2_f3")

# The golden tiny config (golden/README.md "Tiny config"); add variant=... to pick a variant.
TINY_CONFIG = dict(
    block_out_channels=[32, 32], layers_per_block=1,
    down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"], up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"],
    norm_num_groups=8, cross_attention_dim=24, attention_head_dim=8, in_channels=4, out_channels=4, norm_eps=1e-5,
)


def golden_weights(variant: str) -> dict[str, torch.Tensor]:
    """The golden fp16 weights of `variant` under its own key names (B: the golden README's recipe)."""
    if variant in ("A-prev", "A-HEAD"):
        return load_state_dict_file(GOLDEN / FOLDERS[variant] / "diffusion_pytorch_model.safetensors")
    sd = load_state_dict_file(GOLDEN / "ref_a_head" / "diffusion_pytorch_model.safetensors")
    extra = load_file(GOLDEN / "ref_b_init" / "extra_weights.safetensors") if variant == "B-init" else None
    return convert_ref_a_head_to_ref_b(sd, extra)


def golden_checkpoint(variant: str, root: Path) -> Path:
    """A model folder (reference config.json without `variant` + fp16 safetensors) for `variant`."""
    folder = root / FOLDERS[variant]
    if not folder.exists():
        folder.mkdir(parents=True)
        shutil.copy(GOLDEN / FOLDERS[variant] / "config.json", folder / "config.json")
        assert "variant" not in json.loads((folder / "config.json").read_text())
        weights = {k: v.to(torch.float16).contiguous() for k, v in golden_weights(variant).items()}
        save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def cases(variant: str) -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / FOLDERS[variant] / "cases.safetensors")


def run_case(model, data: dict, case: str, dtype=torch.float32) -> torch.Tensor:
    with torch.no_grad():
        return model(data[f"{case}.sample"].to(dtype), data[f"{case}.conditioning_hidden_states"].to(dtype),
                     data[f"{case}.timestep"], data[f"{case}.encoder_hidden_states"].to(dtype))
