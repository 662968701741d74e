"""Checkpoint loading and saving, variant detection, clear errors, bf16, CFG sharing, attention backends."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import continuityseq_stream as csq  # its names import on first use: diffusers loads when a test needs it, not at collection
from continuityseq_stream.errors import CheckpointError, ConfigError, ContinuitySeqError
from continuityseq_stream.models import VARIANTS, detect_variant, load_state_dict_file
from unet_helpers import CASES, FOLDERS, GOLDEN, TINY_CONFIG, cases, golden_checkpoint, golden_weights, run_case


def _tiny(variant: str, seed: int = 0) -> csq.ContinuitySeqUNet:
    torch.manual_seed(seed)
    model = csq.ContinuitySeqUNet(**TINY_CONFIG, variant=variant).eval()
    with torch.no_grad():  # the reference zero-inits some layers; make every tensor matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _drop_variant(folder):
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg.pop("variant") in VARIANTS
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_fp16_round_trip_detects_variant_from_keys(tmp_path, variant, safe, monkeypatch):
    model = _tiny(variant)
    model.save_pretrained(tmp_path / "unet", dtype=torch.float16, safe_serialization=safe)
    name = "diffusion_pytorch_model." + ("safetensors" if safe else "bin")
    assert [p.name for p in (tmp_path / "unet").glob("diffusion_pytorch_model.*")] == [name]
    _drop_variant(tmp_path / "unet")  # detection from keys alone

    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    loaded = csq.ContinuitySeqUNet.from_pretrained(tmp_path)  # subfolder="unet" by default
    assert loaded.config.variant == variant
    if not safe:  # the pickle is only ever read with the restricted unpickler, mmapped
        assert calls and all(k.get("weights_only") is True and k.get("mmap") is True for k in calls)
    assert not loaded.training
    ref = {k: v.to(torch.float16).float() for k, v in model.state_dict().items()}
    got = loaded.state_dict()
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], ref[k], atol=0, rtol=0)


@pytest.mark.slow
def test_fp32_save_and_dtype_choice(tmp_path):
    model = _tiny("A-prev")
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float32 for v in sd.values())
    half = csq.ContinuitySeqUNet.from_pretrained(tmp_path, subfolder=None, torch_dtype=torch.float16)
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert not any(p.is_meta for p in half.parameters())
    full = csq.ContinuitySeqUNet.from_pretrained(tmp_path, subfolder=None, device="cpu")
    for k, v in model.state_dict().items():
        assert torch.equal(full.state_dict()[k], v)


def test_detect_variant_table():
    keys = {v: set(golden_weights(v)) for v in VARIANTS}
    assert {v: detect_variant(k) for v, k in keys.items()} == {v: v for v in VARIANTS}
    with pytest.raises(CheckpointError, match="match no ContinuitySeq UNet variant"):
        detect_variant({"model.diffusion_model.input_blocks.0.0.weight"})


def test_mismatched_checkpoint_names_keys(tmp_path):
    sd = {k: v.half() for k, v in golden_weights("A-prev").items()}
    removed = sorted(k for k in sd if k.startswith("mid_block.temp_convs.1."))
    for k in removed:
        del sd[k]
    sd["mid_block.bogus.weight"] = torch.zeros(3, dtype=torch.float16)
    sd["conv_norm_out.weight"] = torch.zeros(7, dtype=torch.float16)
    (tmp_path / "config.json").write_text((GOLDEN / "ref_a_prev" / "config.json").read_text())
    save_file(sd, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        csq.ContinuitySeqUNet.from_pretrained(tmp_path, subfolder=None)
    msg = str(info.value)
    assert f"{len(removed)} missing keys" in msg and removed[0] in msg
    assert "1 unexpected keys" in msg and "mid_block.bogus.weight" in msg
    assert "conv_norm_out.weight: checkpoint [7] vs model [32]" in msg
    assert "'A-prev'" in msg


def test_config_variant_must_agree_with_keys(tmp_path):
    folder = golden_checkpoint("B-HEAD", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "variant": "B-init"}))
    with pytest.raises(CheckpointError, match="says variant 'B-init' but the keys .* are those of 'B-HEAD'"):
        csq.ContinuitySeqUNet.from_pretrained(folder, subfolder=None)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="variant argument says variant 'A-prev'"):
        csq.ContinuitySeqUNet.from_pretrained(folder, subfolder=None, variant="A-prev")
    assert csq.ContinuitySeqUNet.from_pretrained(folder, subfolder=None, variant="B-HEAD").config.variant == "B-HEAD"


@pytest.mark.parametrize("kind", ["truncated_safetensors", "garbage_bin", "pickle_code_bin"])
def test_corrupted_checkpoint(tmp_path, kind):
    (tmp_path / "config.json").write_text((GOLDEN / "ref_a_prev" / "config.json").read_text())
    if kind == "truncated_safetensors":
        data = (GOLDEN / "ref_a_prev" / "diffusion_pytorch_model.safetensors").read_bytes()
        (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 2])
    elif kind == "garbage_bin":
        (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not a checkpoint" * 100)
    else:  # a pickle that would run code: the restricted unpickler must refuse it
        torch.save({"x": torch.zeros(1), "f": print}, tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot read"):
        csq.ContinuitySeqUNet.from_pretrained(tmp_path, subfolder=None)


def test_missing_things_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing folder nor a hub repo id"):
        csq.ContinuitySeqUNet.from_pretrained(tmp_path / "nope" / "deeper" / "x")
    with pytest.raises(CheckpointError, match="no 'unet' subfolder"):
        csq.ContinuitySeqUNet.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="needs config.json"):
        csq.ContinuitySeqUNet.from_pretrained(tmp_path, subfolder=None)
    (tmp_path / "config.json").write_text((GOLDEN / "ref_a_prev" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="neither diffusion_pytorch_model.safetensors nor"):
        csq.ContinuitySeqUNet.from_pretrained(tmp_path, subfolder=None)
    with pytest.raises(ConfigError, match="unknown options"):
        csq.ContinuitySeqUNet.from_pretrained(GOLDEN / "ref_a_prev", subfolder=None, low_cpu_mem_usage=False)
    cfg = json.loads((GOLDEN / "ref_a_prev" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "frobnicate": 3}))
    save_file({"a": torch.zeros(1)}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ConfigError, match="frobnicate=3"):
        csq.ContinuitySeqUNet.from_pretrained(tmp_path, subfolder=None)


def test_offline_hub_id_says_pass_a_local_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="pass a local folder") as info:
        csq.ContinuitySeqUNet.from_pretrained("b-f/ContinuitySeq-A")
    assert "b-f/ContinuitySeq-A" in str(info.value)


def test_legacy_conditioning_attentions_name_loads(tmp_path):
    sd = {k.replace("temp_conditioning_attentions", "conditioning_attentions"): v.half()
          for k, v in golden_weights("A-prev").items()}
    (tmp_path / "config.json").write_text((GOLDEN / "ref_a_prev" / "config.json").read_text())
    torch.save(sd, tmp_path / "diffusion_pytorch_model.bin")
    model = csq.ContinuitySeqUNet.from_pretrained(tmp_path, subfolder=None)
    data = cases("A-prev")
    torch.testing.assert_close(run_case(model, data, "b_c3_f4"), data["b_c3_f4.expected"], atol=1e-4, rtol=1e-4)


# Observed relative RMS error: bf16 <= 0.032, fp16 <= 0.004 (bf16 keeps 8 mantissa bits).
@pytest.mark.parametrize("variant,dtype,bound", [("A-prev", torch.bfloat16, 5e-2), ("B-init", torch.bfloat16, 5e-2),
                                                 ("A-prev", torch.float16, 1e-2)])
def test_low_precision_on_cpu_close_to_golden(tmp_path, variant, dtype, bound):
    folder = GOLDEN / "ref_a_prev" if variant == "A-prev" else golden_checkpoint(variant, tmp_path)
    model = csq.ContinuitySeqUNet.from_pretrained(folder, subfolder=None, torch_dtype=dtype)
    data = cases(variant)
    for case in CASES:
        out = run_case(model, data, case, dtype=dtype)
        expected = data[f"{case}.expected"]
        assert out.dtype == dtype and out.shape == expected.shape
        err = out.float() - expected
        assert err.norm() / expected.norm() < bound, (case, float(err.norm() / expected.norm()))
        assert err.abs().max() / expected.abs().max() < 2 * bound, (case, float(err.abs().max()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_cfg_sharing_equals_duplicated_conditioning(variant):
    model = _tiny(variant, seed=1)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 4, 6, 6, generator=g)
    y = torch.randn(1, 4, 2, 6, 6, generator=g)
    e = torch.randn(2, 5, 24, generator=g)
    seen = []
    handle = model.conv_in.register_forward_hook(lambda m, i, o: seen.append(o[1].shape[0]))
    with torch.no_grad():
        shared = model(x, y, torch.tensor(500), e)
        full = model(x, y.expand(2, -1, -1, -1, -1).clone(), torch.tensor([500, 500]), e)
        distinct_t = model(x, y, torch.tensor([500, 20]), e)  # not shareable: falls back to B copies
        distinct_ref = model(x, y.repeat(2, 1, 1, 1, 1), torch.tensor([500, 20]), e)
    handle.remove()
    assert seen == [2, 4, 4, 4]  # conditioning rows (Bc·Fc): shared once, else per batch item
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(distinct_t, distinct_ref, atol=1e-5, rtol=1e-5)
    assert (shared[0] - shared[1]).abs().max() > 1e-3  # the two halves really differ (text differs)


def test_attention_backends():
    model = _tiny("A-prev")
    data = cases("A-prev")
    with torch.no_grad():
        ref = run_case(model, data, "b_c3_f4")
        model.set_attention_backend("math")
        math = run_case(model, data, "b_c3_f4")
    assert model.attention_backend == "math"
    torch.testing.assert_close(math, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="unknown"):
        model.set_attention_backend("flash-magic")
    if importlib.util.find_spec("xformers") is None:
        with pytest.raises(ContinuitySeqError, match="xformers package, which is not installed"):
            model.set_attention_backend("xformers")


def test_forward_shapes_and_errors():
    model = _tiny("A-HEAD")
    x, y, e = torch.randn(1, 4, 3, 5, 7), torch.randn(1, 4, 5, 5, 7), torch.randn(1, 2, 24)
    with torch.no_grad():
        out = model(x, y, 10, e, return_dict=True).sample
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="conditioning_hidden_states"):
        model(x, y[..., :4], 10, e)
    with pytest.raises(ConfigError, match="timestep"):
        model(x, y, torch.tensor([1, 2, 3]), e)
    with pytest.raises(ConfigError, match="variant"):
        csq.ContinuitySeqUNet(**TINY_CONFIG, variant="C")
    with pytest.raises(ConfigError, match="not implemented"):
        csq.ContinuitySeqUNet(**TINY_CONFIG, use_conditioning_transformer=True)
