"""The UNet reproduces the reference's golden outputs for all four variants (float32, CPU).

Weights are stored as fp16 and loaded through `from_pretrained` (cast to float32), from folders whose
config.json is the reference's own (no `variant` field): the variant is detected from the keys.
"""

from __future__ import annotations

import pytest
import torch

import continuityseq_stream as csq  # its names import on first use: diffusers loads when a test needs it, not at collection
from unet_helpers import CASES, FOLDERS, GOLDEN, cases, golden_checkpoint, run_case

_MODELS: dict = {}


@pytest.fixture(scope="module")
def load(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden_ckpt")

    def get(variant: str) -> csq.ContinuitySeqUNet:
        if variant not in _MODELS:
            # A folders are the golden ones as shipped; B folders are built with the golden README's recipe.
            folder = GOLDEN / FOLDERS[variant] if variant.startswith("A") else golden_checkpoint(variant, root)
            model = csq.ContinuitySeqUNet.from_pretrained(folder, subfolder=None, torch_dtype=torch.float32)
            assert model.config.variant == variant
            _MODELS[variant] = (model, cases(variant))
        return _MODELS[variant]

    yield get
    _MODELS.clear()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", list(FOLDERS))
def test_golden_case(load, variant, case):
    model, data = load(variant)
    out = run_case(model, data, case)
    torch.testing.assert_close(out, data[f"{case}.expected"], atol=1e-4, rtol=1e-4)


def _record_intermediates(model, names):
    """Forward hooks capturing the golden intermediates: '<module>[.hidden|.cond]' -> tensor."""
    store, handles = {}, []
    for name in names:
        module_name, _, stream = name.rpartition(".") if name.endswith((".hidden", ".cond")) else (name, "", "")
        index = 1 if stream == "cond" else 0

        def hook(_module, _inputs, output, name=name, index=index):
            store[name] = output[index] if isinstance(output, tuple) else output

        handles.append(model.get_submodule(module_name).register_forward_hook(hook))
    return store, handles


@pytest.mark.parametrize("variant", list(FOLDERS))
def test_golden_intermediates(load, variant):
    model, data = load(variant)
    prefix = "h_small_c2_f3.intermediate."
    names = sorted(k[len(prefix):] for k in data if k.startswith(prefix))
    assert len(names) >= 16, names
    store, handles = _record_intermediates(model, names)
    try:
        run_case(model, data, "h_small_c2_f3")
    finally:
        for h in handles:
            h.remove()
    for name in names:
        torch.testing.assert_close(store[name], data[prefix + name], atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
