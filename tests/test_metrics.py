import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import HOOK

import saelab
from saelab.metrics import (
    CE_COLUMNS,
    LINEAR_COLUMNS,
    RECONSTRUCTION_COLUMNS,
    ReconstructionAccumulator,
    evaluate,
    linear_error,
    metrics_dict,
    reconstruction_metrics,
)
from saelab.models import first_tensor, replace_first
from saelab.sae import SAEConfig, SAEOutput


class FixedSAE(torch.nn.Module):
    """Test double: reconstructs its input exactly (`mode="identity"`), zeros, or NaNs."""

    def __init__(self, d_in: int, mode: str = "identity"):
        super().__init__()
        self.cfg = SAEConfig(d_in=d_in, width=d_in, kind=mode)
        self.mode = mode
        self.scale = torch.nn.Parameter(torch.ones(()))  # so the SAE has a device and dtype

    def encode(self, x_BD):
        return x_BD

    def decode(self, f_BF):
        if self.mode == "zero":
            return torch.zeros_like(f_BF)
        if self.mode == "nan":
            return f_BF * math.nan
        return f_BF * self.scale

    def forward(self, x_BD):
        return SAEOutput(self.decode(self.encode(x_BD)), x_BD)


def test_fvu_is_about_the_mean_and_streams():
    g = torch.Generator().manual_seed(0)
    # large mean: about-zero FVU would be ~1/1600 of it
    x = torch.randn(3000, 16, generator=g) + 40.0
    x_hat = x + 0.5 * torch.randn(3000, 16, generator=g)
    f = torch.zeros(3000, 10)
    f[:, 0] = 1.0  # fires everywhere: dense
    f[::20, 1] = 2.0  # 5% of tokens: alive, not dense
    # latents 2..9 never fire: dead
    m = reconstruction_metrics(x, x_hat, f)
    xd, xhd = x.double(), x_hat.double()
    sq = ((xd - xhd) ** 2).sum()
    fvu = float(sq / ((xd - xd.mean(0)) ** 2).sum())
    fvu_about_zero = float(sq / (xd**2).sum())
    assert m["fvu"] == pytest.approx(fvu, rel=1e-10)
    assert m["explained_variance"] == pytest.approx(1 - fvu, rel=1e-10)
    assert m["fvu"] > 100 * fvu_about_zero
    assert m["mse"] == pytest.approx(float(sq / 3000), rel=1e-10)
    assert m["l0"] == pytest.approx(1.05)
    assert m["dead_fraction"] == pytest.approx(0.8)
    assert m["dense_fraction"] == pytest.approx(0.1)
    assert m["n_tokens"] == 3000
    acc = ReconstructionAccumulator()
    for start in range(0, 3000, 701):
        acc.update(x[start : start + 701], x_hat[start : start + 701], f[start : start + 701])
    streamed = acc.result()
    for key in m:
        assert streamed[key] == pytest.approx(m[key], rel=1e-10), key


def test_linear_error_exact_linear_noise_and_lstsq():
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(8, 8, generator=g, dtype=torch.float64)
    x = torch.randn(4000, 8, generator=g, dtype=torch.float64) @ mix + 5.0
    A = torch.randn(8, 8, generator=g, dtype=torch.float64)
    c = torch.randn(8, generator=g, dtype=torch.float64)
    exact = linear_error(x, x @ A + c, chunk=333)
    assert exact["linear_error_r2"] == pytest.approx(1.0, abs=1e-9)
    assert exact["nonlinear_error_fvu"] < 1e-12
    assert exact["linear_fit_tokens"] == 2000 and exact["linear_heldout_tokens"] == 2000

    # A singular covariance (a repeated dim) takes the tiny-ridge path and still fits exactly.
    x_rep = torch.cat([x, x[:, :1]], dim=1)
    singular = linear_error(x_rep, x_rep @ torch.cat([A, A[:1]]) + c)
    assert singular["linear_error_r2"] == pytest.approx(1.0, abs=1e-6)

    noise = linear_error(x, torch.randn(4000, 8, generator=g, dtype=torch.float64))
    assert abs(noise["linear_error_r2"]) < 0.05

    # Mixed case against numpy's least squares (with an intercept column), held-out half.
    e = 0.3 * (x @ A) + torch.randn(4000, 8, generator=g, dtype=torch.float64) * 2.0
    got = linear_error(x, e, chunk=500)
    xf, ef, xh, eh = x[:2000].numpy(), e[:2000].numpy(), x[2000:].numpy(), e[2000:].numpy()
    coef, *_ = np.linalg.lstsq(np.c_[xf, np.ones(2000)], ef, rcond=None)
    pred = np.c_[xh, np.ones(2000)] @ coef
    x_var = ((xh - xh.mean(0)) ** 2).sum()
    r2 = 1 - ((eh - pred) ** 2).sum() / ((eh - eh.mean(0)) ** 2).sum()
    assert got["linear_error_r2"] == pytest.approx(r2, rel=1e-8)
    assert got["linear_error_fvu"] == pytest.approx(
        ((pred - eh.mean(0)) ** 2).sum() / x_var, rel=1e-8
    )
    assert got["nonlinear_error_fvu"] == pytest.approx(((eh - pred) ** 2).sum() / x_var, rel=1e-8)


def test_ce_identity_is_one_and_zero_output_is_zero(stories, medical_tokens):
    d = stories._module.config.hidden_size
    table = evaluate(
        {"identity": FixedSAE(d), "zero": FixedSAE(d, "zero")},
        stories,
        HOOK,
        medical_tokens,
        max_tokens=512,
        batch_size=4,
        progress=False,
    )
    ident, zero = (table.set_index("sae").loc[n] for n in ("identity", "zero"))
    assert ident["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert ident["ce_loss_recovered_mean"] == pytest.approx(1.0, abs=1e-5)
    assert abs(ident["kl"]) < 1e-7 and abs(ident["delta_ce"]) < 1e-6
    assert ident["fvu"] == 0 and ident["mse"] == 0 and ident["l0"] > 0
    assert zero["ce_sae"] == pytest.approx(zero["ce_zero_ablate"], abs=1e-6)
    assert abs(zero["ce_loss_recovered"]) < 1e-5
    assert zero["kl"] > 0 and zero["ce_zero_ablate"] > zero["ce_clean"]
    assert zero["fvu"] > 1  # about the mean, zero output is worse than predicting the mean


def test_evaluate_table_and_splice_match_plain_forward_hooks(stories, medical_tokens):
    tokens = medical_tokens
    d = stories._module.config.hidden_size
    saes = {
        "a": saelab.make_sae("topk", d, 256, seed=0, k=8),
        "b": saelab.make_sae("topk", d, 128, seed=1, k=4),
    }
    table = evaluate(saes, stories, HOOK, tokens, max_tokens=512, batch_size=4, progress=False)
    assert isinstance(table, pd.DataFrame) and list(table["sae"]) == ["a", "b"]
    expected = [
        "sae",
        "hookpoint",
        "n_tokens",
        "n_dropped",
        *RECONSTRUCTION_COLUMNS,
        *LINEAR_COLUMNS,
        *CE_COLUMNS,
    ]
    assert set(expected) <= set(table.columns)
    assert not table[expected].isna().any().any()
    assert ((table["l0"] > 0) & (table["l0"] <= [8, 4])).all()
    assert (table["n_tokens"] + table["n_dropped"] == tokens.numel()).all()
    assert (table["hookpoint"] == HOOK).all()
    plain = metrics_dict(table)
    assert set(plain) == {"a", "b"} and isinstance(plain["a"]["fvu"], float)

    # Independent check of the CE splice with plain PyTorch hooks on the HF model.
    hf, sae = stories._module, saes["a"]
    keep_all = []

    def splice(module, inputs, output):
        h = first_tensor(output)
        keep = saelab.activations.keep_mask(h)
        keep_all.append(keep)
        new = h.clone()
        new[keep] = sae(h[keep]).x_hat
        return replace_first(output, new)

    def ce(logits):
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
        ).item()

    with torch.no_grad():

        def batched_logits():
            return torch.cat([hf(tokens[i : i + 4]).logits for i in range(0, len(tokens), 4)])

        clean_logits = batched_logits()
        handle = hf.model.layers[2].register_forward_hook(splice)
        try:
            spliced_logits = batched_logits()
        finally:
            handle.remove()
    lp_clean, lp_spliced = (
        torch.log_softmax(lg[:, :-1].double(), -1) for lg in (clean_logits, spliced_logits)
    )
    kl = (lp_clean.exp() * (lp_clean - lp_spliced)).sum(-1).mean().item()
    row = table.iloc[0]
    assert row["ce_clean"] == pytest.approx(ce(clean_logits), abs=1e-5)
    assert row["ce_sae"] == pytest.approx(ce(spliced_logits), abs=1e-5)
    assert row["kl"] == pytest.approx(kl, rel=1e-4)
    assert int(sum((~k).sum() for k in keep_all)) == row["n_dropped"]


def test_default_names_and_single_sae(stories, medical_tokens):
    tokens = medical_tokens
    d = stories._module.config.hidden_size
    sae = saelab.make_sae("topk", d, 128, k=4)
    table = evaluate(
        [sae, sae], stories, HOOK, tokens, max_tokens=256, ce=False, linear=False, progress=False
    )
    assert list(table["sae"]) == ["topk-128", "topk-128-2"]
    assert not set(CE_COLUMNS) & set(table.columns)
    one = evaluate(sae, stories, HOOK, tokens, max_tokens=256, ce=False, progress=False)
    assert len(one) == 1 and one["fvu"].iloc[0] == pytest.approx(table["fvu"].iloc[0])


def test_wrong_width_and_non_finite_raise(stories, medical_tokens):
    tokens = medical_tokens
    d = stories._module.config.hidden_size
    with pytest.raises(ValueError, match=rf"'narrow'.*d_in=32.*hidden size is {d}"):
        evaluate(
            {"narrow": saelab.make_sae("topk", 32, 64, k=4)}, stories, HOOK, tokens, progress=False
        )
    with pytest.raises(FloatingPointError, match="'broken'"):
        evaluate(
            {"broken": FixedSAE(d, "nan")}, stories, HOOK, tokens, max_tokens=256, progress=False
        )


def test_float64_sae_dtype_matches_float32_and_leaves_the_sae_alone(stories, medical_tokens):
    d = stories._module.config.hidden_size
    sae = saelab.make_sae("jumprelu", d, 128, seed=3, target_l0=10)
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    kw = dict(max_tokens=512, batch_size=4, progress=False)
    t32 = evaluate(sae, stories, HOOK, medical_tokens, **kw)
    t64 = evaluate(sae, stories, HOOK, medical_tokens, dtype=torch.float64, **kw)
    assert all(p.dtype == torch.float32 for p in sae.parameters()) and sae.training
    assert all(torch.equal(before[k], v) for k, v in sae.state_dict().items())
    assert t64["fvu"].iloc[0] == pytest.approx(t32["fvu"].iloc[0], rel=1e-5)
    assert t64["ce_sae"].iloc[0] == pytest.approx(t32["ce_sae"].iloc[0], rel=1e-5)

    # The float64 table is the float64 SAE's: FVU by hand over the same kept activations.
    store = saelab.harvest(
        stories, HOOK, medical_tokens, max_tokens=512, batch_size=4, progress=False
    )
    x = store.get(torch.arange(len(store))).double()
    with torch.no_grad():
        x_hat = copy.deepcopy(sae).double().eval()(x).x_hat
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert t64["fvu"].iloc[0] == pytest.approx(fvu, rel=1e-10)
    assert t32["fvu"].iloc[0] != pytest.approx(fvu, rel=1e-10)  # float32 really ran in float32
