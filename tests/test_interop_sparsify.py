"""sparsify folders (`<run>/<hookpoint>/cfg.json` + `sae.safetensors`): hand-built files
against a numpy reference of its encode; round trips; malformed files."""

import json

import numpy as np
import pytest
from interop_reference import (
    D,
    F,
    K,
    acts,
    assert_encodes,
    assert_same_sae,
    f64,
    perturbed,
    random_weights,
    relu,
    topk_dense,
)
from safetensors.numpy import load_file, save_file

from saelab import interop, load_sae


def write_sparsify(folder, **cfg_extra):
    """The layout `SparseCoder.save_to_disk` writes (cfg.to_dict() + d_in)."""
    w = random_weights()
    tensors = {
        "encoder.weight": np.ascontiguousarray(w["W_enc"].T),
        "encoder.bias": w["b_enc"],
        "W_dec": w["W_dec"],
        "b_dec": w["b_dec"],
    }
    folder.mkdir(parents=True)
    save_file(tensors, folder / "sae.safetensors")
    cfg = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": F,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D,
        **cfg_extra,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def sparsify_reference(t, x, k):
    """sparsify's encode: topk(relu((x - b_dec) W_enc^T + b_enc)); decode f W_dec + b_dec."""
    t = f64(t)
    pre = relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    f = topk_dense(pre, k)
    return f, f @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize(
    "hook_folder, hookpoint",
    [
        ("layers.6", "resid_post.6"),
        ("layers.6.mlp", "mlp_out.6"),
        ("model.layers.6", "resid_post.6"),
    ],
)
def test_sparsify_encodes_as_sparsify(tmp_path, hook_folder, hookpoint):
    t = write_sparsify(tmp_path / "run" / hook_folder)
    sae = load_sae(tmp_path / "run" / hook_folder)
    assert sae.kind == "topk" and sae.cfg.k == K and sae.cfg.hookpoint == hookpoint
    x = acts()
    assert_encodes(sae, x, *sparsify_reference(t, x, K))


def test_num_latents_zero_means_expansion_factor(tmp_path):
    """`num_latents: 0` -> d_in·expansion_factor latents (here 3·16 = 48)."""
    write_sparsify(tmp_path / "layers.1", num_latents=0, expansion_factor=F // D)
    assert load_sae(tmp_path / "layers.1").cfg.width == F


def test_round_trip_through_sparsify_is_bit_exact(tmp_path):
    sae = perturbed("topk")
    folder = interop.save_sparsify(sae, tmp_path / "run")
    assert folder == tmp_path / "run" / "layers.3"  # sparsify's module name for resid_post.3
    tensors = load_file(folder / "sae.safetensors")
    assert set(tensors) == {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}
    x = acts()
    assert_encodes(sae, x, *sparsify_reference(tensors, x, K))
    assert_same_sae(sae, load_sae(folder))


def test_only_topk_saes_export_to_sparsify(tmp_path):
    with pytest.raises(ValueError, match="a jumprelu SAE cannot be written as a sparsify"):
        interop.save_sparsify(perturbed("jumprelu"), tmp_path / "run")


@pytest.mark.parametrize(
    "cfg_extra, message",
    [
        ({"activation": "groupmax"}, "activation='groupmax' has no saelab kind"),
        ({"transcode": True}, "transcode=True has no saelab kind"),
        ({"skip_connection": True}, "skip_connection=True has no saelab kind"),
        ({"num_latents": F + 2}, rf"encoder.weight has shape \({F}, {D}\).*needs \({F + 2}, {D}\)"),
    ],
)
def test_sparsify_configs_saelab_cannot_load(tmp_path, cfg_extra, message):
    write_sparsify(tmp_path / "layers.2", **cfg_extra)
    with pytest.raises(ValueError, match=message):
        load_sae(tmp_path / "layers.2")


def test_sparsify_missing_and_extra_tensors(tmp_path):
    t = write_sparsify(tmp_path / "a" / "layers.2")
    save_file({k: v for k, v in t.items() if k != "b_dec"}, tmp_path / "a/layers.2/sae.safetensors")
    with pytest.raises(ValueError, match=r"sae.safetensors.*missing \['b_dec'\]"):
        load_sae(tmp_path / "a" / "layers.2")
    save_file(
        {**t, "W_skip": np.zeros((D, D), np.float32)}, tmp_path / "a/layers.2/sae.safetensors"
    )
    with pytest.raises(ValueError, match=r"unexpected \['W_skip'\]"):
        load_sae(tmp_path / "a" / "layers.2")
