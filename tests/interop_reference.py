"""Shared by the tests/test_interop_*.py files: random weights, SAEs with every parameter
perturbed, numpy float64 encodes written from each tool's own source (not from saelab's),
and the bit-for-bit comparison of two saelab SAEs."""

from __future__ import annotations

import math

import numpy as np
import torch

from saelab import make_sae

D, F, K = 16, 48, 5
rng = np.random.default_rng(0)


def acts(n: int = 64, seed: int = 1) -> np.ndarray:
    """Activations `[n, D]` with a non-zero mean, so a b_dec convention error shows."""
    g = np.random.default_rng(seed)
    return (g.normal(size=(n, D)) * 2.0 + g.normal(size=D)).astype(np.float32)


def random_weights(seed: int = 0, d: int = D, F_: int = F) -> dict[str, np.ndarray]:
    """W_enc [d,F], W_dec [F,d] (rows of norms 0.5-2), b_enc, b_dec, threshold [F] > 0."""
    g = np.random.default_rng(seed)
    W_dec = g.normal(size=(F_, d))
    W_dec *= g.uniform(0.5, 2.0, size=(F_, 1)) / np.linalg.norm(W_dec, axis=1, keepdims=True)
    return {
        "W_enc": (g.normal(size=(d, F_)) / math.sqrt(d)).astype(np.float32),
        "W_dec": W_dec.astype(np.float32),
        "b_enc": (0.3 * g.normal(size=F_)).astype(np.float32),
        "b_dec": (0.5 * g.normal(size=d)).astype(np.float32),
        "threshold": g.uniform(0.05, 1.0, size=F_).astype(np.float32),
    }


def relu(x):
    return np.maximum(x, 0.0)


def topk_dense(z: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest entries per row (then ReLU), zeros elsewhere."""
    out = np.zeros_like(z)
    idx = np.argpartition(-z, k - 1, axis=1)[:, :k]
    rows = np.arange(len(z))[:, None]
    out[rows, idx] = relu(z[rows, idx])
    return out


def jump(pre: np.ndarray, threshold) -> np.ndarray:
    """`relu(pre) · 1[pre > θ]` (SAELens, Gemma Scope, dictionary_learning JumpReLU)."""
    return relu(pre) * (pre > threshold)


def f64(tensors: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}


def assert_encodes(sae, x: np.ndarray, f_ref: np.ndarray, x_hat_ref: np.ndarray) -> None:
    """saelab's encode/decode of `x` equal the references within 1e-5, and the codes are not
    trivial (some fire, some do not)."""
    assert (f_ref > 0).any() and (f_ref == 0).any()
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(x).to(sae.W_dec_FD.dtype))
        x_hat = sae.decode(f)
    np.testing.assert_allclose(f.double().numpy(), f_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(x_hat.double().numpy(), x_hat_ref, atol=1e-5, rtol=1e-5)


def perturbed(kind: str, seed: int = 3, d: int = D, width: int = F, **options):
    """A saelab SAE of `kind` with random biases, encoder noise, thresholds and decoder row
    norms, on hookpoint resid_post.3 of a named model."""
    options = {**({"k": K} if kind in ("topk", "batchtopk") else {}), **options}
    sae = make_sae(kind, d, width, seed=seed, hookpoint="resid_post.3", model="org/tiny", **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc_DF.add_(0.1 * torch.randn(d, width, generator=g))
        sae.W_dec_FD.mul_(torch.rand(width, 1, generator=g) + 0.5)
        sae.b_enc_F.copy_(0.3 * torch.randn(width, generator=g))
        sae.b_dec_D.copy_(0.5 * torch.randn(d, generator=g))
        if kind == "jumprelu":
            sae.log_threshold_F.uniform_(math.log(0.05), math.log(1.0), generator=g)
        if kind == "batchtopk":
            sae.threshold.fill_(0.3)
            sae.threshold_count.fill_(11)
    sae.cfg.neuronpedia_id = "tiny/3-res"
    return sae


def assert_same_sae(a, b) -> None:
    """Same kind, config and state, tensor for tensor, bit for bit; same codes."""
    assert type(a) is type(b)
    cfg_a, cfg_b = a.cfg.to_dict(), b.cfg.to_dict()
    cfg_a.pop("source"), cfg_b.pop("source")
    assert cfg_a == cfg_b
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        if name == "log_threshold_F":  # JumpReLU keeps log θ; files keep θ: θ is what must match
            assert torch.equal(a.threshold_F, b.threshold_F), name
        else:
            assert torch.equal(state_a[name], state_b[name]), name
    x = torch.from_numpy(acts())
    with torch.no_grad():
        assert torch.equal(a.encode(x), b.encode(x))
        assert torch.equal(a(x).x_hat, b(x).x_hat)
