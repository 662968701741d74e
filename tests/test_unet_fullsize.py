"""Full-size (default config) models built on the meta device: parameter counts, key names and shapes.

The counts are those of the references' default constructors (ARCHITECTURE.md §1); A-prev's equals the
published ContinuitySeq-A checkpoint. Meta tensors take no memory, so this runs in about a second.
"""

from __future__ import annotations

import pytest
import torch

import continuityseq_stream as csq  # its names import on first use: diffusers loads when a test needs it, not at collection

COUNTS = {  # variant: (parameters, state-dict tensors)
    "A-prev": (2_414_450_544, 2488),
    "A-HEAD": (2_288_796_112, 2232),
    "B-init": (2_333_275_464, 2316),
    "B-HEAD": (2_288_793_544, 2228),
}


def _meta(variant: str, **kwargs) -> dict[str, tuple]:
    with torch.device("meta"):
        model = csq.ContinuitySeqUNet(variant=variant, **kwargs)
    assert all(p.is_meta for p in model.parameters())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def shapes():
    return {v: _meta(v) for v in COUNTS}


@pytest.mark.parametrize("variant", list(COUNTS))
@pytest.mark.slow
def test_parameter_counts(shapes, variant):
    sd = shapes[variant]
    assert sum(torch.Size(s).numel() for s in sd.values()) == COUNTS[variant][0]
    assert len(sd) == COUNTS[variant][1]


def test_a_prev_keys_and_shapes(shapes):
    sd = shapes["A-prev"]
    expect = {
        "conv_in.spatial_conv.weight": (320, 4, 3, 3),
        "conv_in.conditioning_block.conditioning_norm.gamma.0.weight": (320, 320),
        "down_blocks.0.resnets.0.conv1.conditioning_block.conditioning_norm.gamma.0.weight": (320, 320),
        "down_blocks.0.resnets.0.conv1.conditioning_block.conditioning_norm.beta.0.bias": (320,),
        "down_blocks.1.resnets.0.conv_shortcut.spatial_conv.weight": (640, 320, 1, 1),
        "down_blocks.1.resnets.0.c_norm1.weight": (320,),
        "down_blocks.1.resnets.0.time_c_emb_proj.weight": (640, 1280),
        "down_blocks.0.downsamplers.0.conv.conditioning_conv.weight": (320, 320, 3, 3),
        "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k.weight": (1280, 1024),
        "down_blocks.2.attentions.1.transformer_blocks.0.ff.net.0.proj.weight": (10240, 1280),
        "down_blocks.2.attentions.1.transformer_blocks.0.ff.net.2.weight": (1280, 5120),
        "down_blocks.1.temp_conditioning_attentions.0.cond_proj_in.weight": (640, 640),
        "down_blocks.1.temp_conditioning_attentions.0.transformer_blocks.0.attn1.to_k.weight": (640, 640),
        "down_blocks.3.temp_convs.1.conv4.3.weight": (1280, 1280, 3, 1, 1),
        "down_blocks.3.temp_convs.1.conv1.2.bias": (1280,),
        "transformer_in.proj_in.weight": (512, 320),
        "transformer_in.transformer_blocks.0.attn1.to_q.weight": (512, 512),
        "transformer_in.proj_out.weight": (320, 512),
        "time_embedding.linear_1.weight": (1280, 320),
        "time_embedding.linear_2.weight": (1280, 1280),
        "mid_block.temp_conditioning_attentions.0.norm.weight": (1280,),
        "mid_block.resnets.1.conv2.conditioning_block.conditioning_norm.beta.0.weight": (1280, 1280),
        "up_blocks.0.upsamplers.0.conv.spatial_conv.weight": (1280, 1280, 3, 3),
        "conv_norm_out.weight": (320,),
        "conv_out.spatial_conv.weight": (4, 320, 3, 3),
        "conv_out.conditioning_block.conditioning_norm.gamma.0.weight": (4, 4),
    }
    assert {k: sd.get(k) for k in expect} == expect
    # no block of a different architecture slipped in
    assert not any(k.startswith(("conditioning_in.", "conditioning_time_embedding.", "hidden_")) for k in sd)
    assert not any(".conditioning_attentions." in k or ".conditioning_proj." in k for k in sd)
    assert "down_blocks.3.downsamplers.0.conv.spatial_conv.weight" not in sd
    assert "up_blocks.3.upsamplers.0.conv.spatial_conv.weight" not in sd
    assert "mid_block.attentions.1.norm.weight" not in sd
    # up resnet input widths (§4.6): current + skip channels
    widths = {i: [sd[f"up_blocks.{i}.resnets.{j}.norm1.weight"][0] for j in range(3)] for i in range(4)}
    assert widths == {0: [2560, 2560, 2560], 1: [2560, 2560, 1920], 2: [1920, 1280, 960], 3: [960, 640, 640]}
    assert all(f"up_blocks.{i}.resnets.{j}.conv_shortcut.spatial_conv.weight" in sd
               for i in range(4) for j in range(3))


def test_other_variants_keys(shapes):
    head, b_init, b_head = shapes["A-HEAD"], shapes["B-init"], shapes["B-HEAD"]
    assert head["conditioning_in.gamma.0.weight"] == (4, 320)
    assert head["conditioning_time_embedding.linear_1.weight"] == (1280, 320)
    assert not any(".conditioning_block." in k for k in head)
    assert b_init["hidden_time_embedding.linear_2.weight"] == (1280, 1280)
    assert b_init["up_blocks.2.resnets.0.conditioning_norm3.weight"] == (640, 640)
    assert b_init["up_blocks.2.resnets.0.hidden_norm1.weight"] == (1920,)
    assert b_init["up_blocks.2.resnets.0.conditioning_time_emb_proj.weight"] == (640, 1280)
    assert set(b_head) == {k for k in b_init if ".conditioning_norm3." not in k and ".conditioning_proj." not in k}
    assert not any(k.startswith(("conditioning_in.", "time_embedding.")) for k in b_head)


@pytest.mark.slow
def test_a_prev_flag_combinations():
    # §1: the temporal-conditioning transformers and the conditioning blocks account for these deltas
    no_tc = _meta("A-prev", use_temp_conditioning_transformer=False)
    no_blocks = _meta("A-prev", use_conditioning_norm=False)
    total = lambda sd: sum(torch.Size(s).numel() for s in sd.values())  # noqa: E731
    assert COUNTS["A-prev"][0] - total(no_tc) == 285_278_720
    assert COUNTS["A-prev"][0] - total(no_blocks) == 127_707_560
