"""Gemma Scope (`params.npz`), Gemma Scope 2 and Llama Scope files built by hand from their
published layout, against numpy references of their encode."""

import json
import math

import numpy as np
import pytest
import torch
from interop_reference import D, F, acts, assert_encodes, f64, jump, random_weights
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from saelab import load_sae


def gemma_reference(w, x):
    """Gemma Scope's tutorial JumpReLU: no b_dec subtraction, `relu(pre)·1[pre > θ]`."""
    t = f64(w)
    f = jump(x @ t["W_enc"] + t["b_enc"], t["threshold"])
    return f, f @ t["W_dec"] + t["b_dec"]


def write_npz(tmp_path, release="gemma-scope-2b-pt-res", layer=12, **override):
    folder = tmp_path / release / f"layer_{layer}" / "width_16k" / "average_l0_82"
    folder.mkdir(parents=True)
    w = {**random_weights(), **override}
    np.savez(folder / "params.npz", **w)
    return folder, w


def test_gemma_scope_npz_encodes_as_gemma_scope(tmp_path):
    folder, w = write_npz(tmp_path)
    sae = load_sae(folder / "params.npz")  # the file or its folder
    assert sae.kind == "jumprelu" and sae.cfg.hookpoint == "resid_post.12"
    assert sae.cfg.source["format"] == "gemma_scope"
    x = acts()
    assert_encodes(sae, x, *gemma_reference(w, x))
    # the thresholds are the file's to the ulp (JumpReLU keeps log θ; exp cannot reach all θ)
    torch.testing.assert_close(
        sae.threshold_F.detach(), torch.from_numpy(w["threshold"]), rtol=1.2e-7, atol=0
    )


@pytest.mark.parametrize(
    "release, hookpoint",
    [
        ("gemma-scope-9b-pt-mlp-canonical", "mlp_out.3"),
        ("gemma-scope-2b-pt-att", "blocks.3.attn.hook_z"),
    ],
)
def test_gemma_scope_site_from_the_release_name(tmp_path, release, hookpoint):
    folder, _ = write_npz(tmp_path, release=release, layer=3)
    assert load_sae(folder).cfg.hookpoint == hookpoint


def test_gemma_scope_npz_without_site_takes_the_given_hookpoint(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    np.savez(folder / "params.npz", **random_weights())
    assert load_sae(folder, hookpoint="resid_post.5").cfg.hookpoint == "resid_post.5"


def test_gemma_scope_npz_malformed(tmp_path):
    w = random_weights()
    folder, _ = write_npz(tmp_path / "a", b_dec=w["b_dec"][:-1])
    with pytest.raises(ValueError, match=rf"params.npz: b_dec has shape \({D - 1},\).*\({D},\)"):
        load_sae(folder)
    folder = tmp_path / "b"
    folder.mkdir()
    np.savez(folder / "params.npz", **{k: v for k, v in w.items() if k != "threshold"})
    with pytest.raises(ValueError, match=r"missing \['threshold'\]"):
        load_sae(folder)
    folder = tmp_path / "c"
    folder.mkdir()
    np.savez(folder / "params.npz", **w, W_obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="params.npz is not a readable .npz of arrays"):
        load_sae(folder)  # an object array would need unpickling: refused


def write_gs2(folder, hook_in="model.layers.9.output", **cfg_extra):
    folder.mkdir(parents=True)
    w = random_weights()
    save_numpy({k.lower(): v for k, v in w.items()}, folder / "params.safetensors")
    cfg = {
        "architecture": "jump_relu",
        "model_name": "google/gemma-3-1b-pt",
        "hf_hook_point_in": hook_in,
        "hf_hook_point_out": hook_in,
        **cfg_extra,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    return w


def test_gemma_scope_2_encodes_as_gemma_scope(tmp_path):
    w = write_gs2(tmp_path / "resid_post" / "layer_9_width_16k_l0_small")
    sae = load_sae(tmp_path / "resid_post" / "layer_9_width_16k_l0_small")
    assert sae.kind == "jumprelu" and sae.cfg.hookpoint == "resid_post.9"
    assert sae.cfg.model == "google/gemma-3-1b-pt"
    x = acts()
    assert_encodes(sae, x, *gemma_reference(w, x))


def test_gemma_scope_2_refuses_transcoders_and_other_architectures(tmp_path):
    write_gs2(tmp_path / "t", hf_hook_point_out="model.layers.9.post_feedforward_layernorm.output")
    with pytest.raises(ValueError, match="is a transcoder"):
        load_sae(tmp_path / "t")
    write_gs2(tmp_path / "a", architecture="topk")
    with pytest.raises(ValueError, match="architecture 'topk'"):
        load_sae(tmp_path / "a")


def write_llama_scope(folder, norm_in=7.5, theta=0.6, **cfg_extra):
    """hyperparams.json + checkpoints/final.safetensors, bf16 as released."""
    w = random_weights()
    tensors = {
        "encoder.weight": torch.from_numpy(w["W_enc"].T.copy()).bfloat16(),
        "encoder.bias": torch.from_numpy(w["b_enc"]).bfloat16(),
        "decoder.weight": torch.from_numpy(w["W_dec"].T.copy()).bfloat16(),
        "decoder.bias": torch.from_numpy(w["b_dec"]).bfloat16(),
    }
    (folder / "checkpoints").mkdir(parents=True)
    save_torch(tensors, folder / "checkpoints" / "final.safetensors")
    cfg = {
        "d_model": D,
        "d_sae": F,
        "hook_point_in": "blocks.4.hook_resid_post",
        "hook_point_out": "blocks.4.hook_resid_post",
        "jump_relu_threshold": theta,
        "dataset_average_activation_norm": {"in": norm_in, "out": norm_in},
        **cfg_extra,
    }
    (folder / "hyperparams.json").write_text(json.dumps(cfg))
    return {k: v.double().numpy() for k, v in tensors.items()}


def llama_scope_reference(t, x, norm_in, theta):
    """SAELens's reading of a Llama Scope SAE (its llama_scope loader + folding
    `s = sqrt(d)/norm_in` into W_enc, W_dec and b_dec, θ scaled by s): inputs scaled by s,
    no b_dec subtraction, outputs divided by s."""
    s = math.sqrt(D) / norm_in
    pre = (x * s) @ t["encoder.weight"].T + t["encoder.bias"]
    f = jump(pre, theta * s)
    return f, (f @ t["decoder.weight"].T + t["decoder.bias"]) / s


def test_llama_scope_folds_its_input_norm(tmp_path):
    folder = tmp_path / "Llama3_1-8B-Base-L4R-8x"
    t = write_llama_scope(folder, norm_in=7.5, theta=0.6)
    sae = load_sae(folder)
    assert sae.kind == "jumprelu" and sae.cfg.hookpoint == "resid_post.4"
    assert sae.W_dec_FD.dtype == torch.float32  # bf16 file, float32 unless asked
    assert sae.cfg.input_scale == pytest.approx(math.sqrt(D) / 7.5)
    x = acts()
    assert_encodes(sae, x, *llama_scope_reference(t, x, 7.5, 0.6))


def test_llama_scope_malformed(tmp_path):
    write_llama_scope(tmp_path / "a", d_sae=F * 2)
    with pytest.raises(ValueError, match=rf"encoder.weight has shape \({F}, {D}\).*d_sae={2 * F}"):
        load_sae(tmp_path / "a")
    write_llama_scope(tmp_path / "b", hook_point_out="blocks.4.hook_mlp_out")
    with pytest.raises(ValueError, match="is a transcoder"):
        load_sae(tmp_path / "b")
    folder = tmp_path / "c"
    write_llama_scope(folder)
    cfg = json.loads((folder / "hyperparams.json").read_text())
    del cfg["jump_relu_threshold"]
    (folder / "hyperparams.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="has no 'jump_relu_threshold'"):
        load_sae(folder)
