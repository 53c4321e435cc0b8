"""SAELens v6 folders: hand-built files against a numpy SAELens encode; round trips."""

import json

import numpy as np
import pytest
import torch
from interop_reference import (
    D,
    F,
    K,
    acts,
    assert_encodes,
    assert_same_sae,
    f64,
    jump,
    perturbed,
    random_weights,
    relu,
    topk_dense,
)
from safetensors.numpy import save_file

from saelab import interop, load_sae, make_sae


def write_sae_lens(folder, arch="standard", apply_b_dec=True, version="6.54.12", **extra):
    """A SAELens folder as its `save_model` writes it (cfg.to_dict() + metadata)."""
    w = random_weights()
    tensors = {k: w[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    if arch == "jumprelu":
        tensors["threshold"] = w["threshold"]
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "sae_weights.safetensors")
    cfg = {
        "architecture": arch,
        "d_in": D,
        "d_sae": F,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": version,
            "model_name": "gpt2",
            "hook_name": "blocks.7.hook_resid_post",
            "neuronpedia_id": "gpt2-small/7-res-jb",
        },
        **extra,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors, cfg


def sae_lens_reference(tensors, cfg, x):
    """SAELens's encode/decode (sae.py process_sae_in, standard/topk/jumprelu encode)."""
    t = f64(tensors)
    sae_in = x - t["b_dec"] * cfg["apply_b_dec_to_input"]
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    norm = np.linalg.norm(t["W_dec"], axis=1)
    rescale = cfg.get("rescale_acts_by_decoder_norm", False)
    if cfg["architecture"] == "standard":
        f = relu(pre)
    elif cfg["architecture"] == "topk":
        f = topk_dense(pre * norm if rescale else pre, cfg["k"])
    else:
        f = jump(pre, t["threshold"])
    x_hat = (f / norm if rescale else f) @ t["W_dec"] + t["b_dec"]
    return f, x_hat


@pytest.mark.parametrize(
    "arch, apply_b_dec, extra, kind",
    [
        ("standard", True, {}, "relu"),
        ("standard", False, {}, "relu"),
        ("topk", True, {"k": K}, "topk"),
        ("topk", False, {"k": K, "rescale_acts_by_decoder_norm": True}, "topk"),
        ("jumprelu", False, {}, "jumprelu"),  # Gemma Scope in SAELens
        ("jumprelu", True, {}, "jumprelu"),  # b_dec subtracted: folded into b_enc
    ],
)
def test_loaded_sae_lens_encodes_as_sae_lens(tmp_path, arch, apply_b_dec, extra, kind):
    tensors, cfg = write_sae_lens(tmp_path / "sae", arch, apply_b_dec, **extra)
    sae = load_sae(tmp_path / "sae")
    assert sae.kind == kind and sae.W_dec_FD.dtype == torch.float32
    assert sae.cfg.hookpoint == "resid_post.7" and sae.cfg.model == "gpt2"
    assert sae.cfg.neuronpedia_id == "gpt2-small/7-res-jb"
    x = acts()
    assert_encodes(sae, x, *sae_lens_reference(tensors, cfg, x))


def test_batchtopk_saved_as_jumprelu_with_one_threshold_loads_as_batchtopk(tmp_path):
    tensors, cfg = write_sae_lens(tmp_path / "sae", "jumprelu", True, k=K)
    tensors["threshold"] = np.full(F, 0.4, dtype=np.float32)
    save_file(tensors, tmp_path / "sae" / "sae_weights.safetensors")
    sae = load_sae(tmp_path / "sae")
    assert sae.kind == "batchtopk" and sae.cfg.k == K and float(sae.threshold) == pytest.approx(0.4)
    x = acts()
    assert_encodes(sae, x, *sae_lens_reference(tensors, cfg, x))


def test_pre_6_flat_config_and_bf16_weights(tmp_path):
    """Before 6.0 the hook name sat at the top level (`hook_point`); bf16 loads as float32
    unless a dtype is asked for."""
    folder = tmp_path / "sae"
    w = random_weights()
    bf16 = {k: torch.from_numpy(w[k]).bfloat16() for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    folder.mkdir()
    from safetensors.torch import save_file as save_torch

    save_torch(bf16, folder / "sae_weights.safetensors")
    cfg = {
        "d_in": D,
        "d_sae": F,
        "dtype": "bfloat16",
        "hook_point": "blocks.2.hook_mlp_out",
        "model_name": "gpt2",
        "apply_b_dec_to_input": True,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(folder)
    assert sae.kind == "relu" and sae.cfg.hookpoint == "mlp_out.2"
    assert sae.W_enc_DF.dtype == torch.float32
    assert torch.equal(sae.W_enc_DF, bf16["W_enc"].float())
    assert load_sae(folder, dtype=torch.bfloat16).W_enc_DF.dtype == torch.bfloat16
    x = acts()
    ref = sae_lens_reference(
        {k: v.float().numpy() for k, v in bf16.items()}, {**cfg, "architecture": "standard"}, x
    )
    assert_encodes(sae, x, *ref)


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu"])
def test_round_trip_through_sae_lens_is_bit_exact(tmp_path, kind):
    sae = perturbed(kind)
    folder = interop.save_sae_lens(sae, tmp_path / "lens")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["metadata"]["sae_lens_version"] >= "6.0"
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert cfg["architecture"] == {"relu": "standard", "topk": "topk"}.get(kind, "jumprelu")
    assert_same_sae(sae, load_sae(folder))


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu"])
def test_written_file_encodes_as_sae_lens_would(tmp_path, kind):
    """The exported tensors and cfg, read by the SAELens reference, give saelab's codes."""
    sae = perturbed(kind)
    folder = interop.save_sae_lens(sae, tmp_path / "lens")
    from safetensors.numpy import load_file

    tensors = load_file(folder / "sae_weights.safetensors")
    assert set(tensors) == {"W_enc", "W_dec", "b_enc", "b_dec"} | (
        {"threshold"} if kind in ("batchtopk", "jumprelu") else set()
    )
    x = acts()
    assert_encodes(
        sae, x, *sae_lens_reference(tensors, json.loads((folder / "cfg.json").read_text()), x)
    )


def test_malformed_sae_lens_folders(tmp_path):
    tensors, cfg = write_sae_lens(tmp_path / "a", "jumprelu", False)
    del tensors["threshold"]
    save_file(tensors, tmp_path / "a" / "sae_weights.safetensors")
    with pytest.raises(ValueError, match=r"sae_weights.safetensors.*missing \['threshold'\]"):
        load_sae(tmp_path / "a")

    tensors, cfg = write_sae_lens(tmp_path / "b")
    save_file(
        {**tensors, "W_dec": tensors["W_dec"][:-1]}, tmp_path / "b" / "sae_weights.safetensors"
    )
    with pytest.raises(
        ValueError, match=rf"W_dec has shape \({F - 1}, {D}\).*d_sae={F}.*\({F}, {D}\)"
    ):
        load_sae(tmp_path / "b")

    write_sae_lens(tmp_path / "c", d_sae=F + 1)  # config says another width than the file
    with pytest.raises(ValueError, match=rf"W_enc has shape \({D}, {F}\).*needs \({D}, {F + 1}\)"):
        load_sae(tmp_path / "c")

    write_sae_lens(tmp_path / "d", "gated")
    with pytest.raises(ValueError, match="architecture 'gated' has no saelab kind"):
        load_sae(tmp_path / "d")

    write_sae_lens(tmp_path / "e", normalize_activations="expected_average_only_in")
    with pytest.raises(ValueError, match="normalize_activations"):
        load_sae(tmp_path / "e")

    with pytest.raises(ValueError, match="a kron SAE cannot be written as a SAELens SAE"):
        interop.save_sae_lens(make_sae("kron", D, F, k=K, heads=4, m=4, n=3), tmp_path / "f")
