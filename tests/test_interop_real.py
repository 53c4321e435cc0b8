"""Round trips against the real packages (the `interop` extra: sae-lens, eai-sparsify), on
real activations (stories260K `resid_post.2`, d = 64): a saelab SAE written for the tool
loads with the tool's own loader and encodes/decodes as saelab does, and the reverse.
Skipped when the extra is not installed."""

import pytest
import torch
from interop_reference import perturbed

import saelab
from saelab import interop, load_sae

D_MODEL, WIDTH, K = 64, 256, 8


@pytest.fixture(scope="module")
def x_ND(medical_store):
    return medical_store.get(torch.arange(512))


def assert_agree(sae, x_ND, f_tool_NF, decode_tool, threshold_F=None):
    """saelab's codes equal the tool's within 1e-5, and both decoders map the tool's codes to
    the same reconstruction. With `threshold_F`, a code may differ where the pre-activation
    is within 1e-5 of its threshold (the two sides round `pre` differently; one such flip in
    ~10^5 codes has been seen)."""
    with torch.no_grad():
        f_NF = sae.encode(x_ND)
        x_hat_ND = sae.decode(f_tool_NF.float())
        x_hat_tool_ND = decode_tool(f_tool_NF).float()
    f_tool_NF = f_tool_NF.float()
    assert (f_NF > 0).any() and (f_NF == 0).any()
    keep_NF = torch.ones_like(f_NF, dtype=torch.bool)
    if threshold_F is not None:
        differ_NF = (f_NF - f_tool_NF).abs() > 1e-5
        at_edge_NF = (torch.maximum(f_NF, f_tool_NF) - threshold_F.float()).abs() < 1e-5
        assert int(differ_NF.sum()) <= 2
        keep_NF = ~(differ_NF & at_edge_NF)
    torch.testing.assert_close(f_tool_NF[keep_NF], f_NF[keep_NF], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_hat_tool_ND, x_hat_ND, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu"])
def test_saelab_sae_loads_in_sae_lens(tmp_path, x_ND, kind):
    sae_lens = pytest.importorskip("sae_lens")
    sae = (
        perturbed(kind, d=D_MODEL, width=WIDTH, k=K)
        if kind in ("topk", "batchtopk")
        else (perturbed(kind, d=D_MODEL, width=WIDTH))
    )
    folder = interop.save_sae_lens(sae, tmp_path / "lens")
    theirs = sae_lens.SAE.load_from_disk(folder)
    assert theirs.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert theirs.cfg.metadata.neuronpedia_id == "tiny/3-res"
    threshold_F = getattr(theirs, "threshold", None)
    with torch.no_grad():
        assert_agree(sae, x_ND, theirs.encode(x_ND), theirs.decode, threshold_F)


def sae_lens_sae(sae_lens, arch: str, seed: int = 0):
    """A SAELens SAE of `arch` with every parameter random (their init leaves b_enc, b_dec
    and thresholds at 0, which would hide convention errors)."""
    torch.manual_seed(seed)
    make = {
        "standard": lambda: sae_lens.StandardSAE(
            sae_lens.StandardSAEConfig(d_in=D_MODEL, d_sae=WIDTH)
        ),
        "topk": lambda: sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_MODEL, d_sae=WIDTH, k=K)),
        "jumprelu": lambda: sae_lens.JumpReLUSAE(
            sae_lens.JumpReLUSAEConfig(d_in=D_MODEL, d_sae=WIDTH)
        ),
        "batchtopk": lambda: sae_lens.BatchTopKTrainingSAE(
            sae_lens.BatchTopKTrainingSAEConfig(d_in=D_MODEL, d_sae=WIDTH, k=K)
        ),
    }[arch]()
    with torch.no_grad():
        make.W_enc.normal_(0, D_MODEL**-0.5)
        make.W_dec.normal_(0, D_MODEL**-0.5)
        make.b_enc.normal_(0, 0.3)
        make.b_dec.normal_(0, 0.5)
        if arch == "jumprelu":
            make.threshold.uniform_(0.05, 1.0)
        if arch == "batchtopk":
            make.topk_threshold.fill_(0.4)
    return make


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "batchtopk"])
def test_sae_lens_sae_loads_in_saelab(tmp_path, x_ND, arch):
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens_sae(sae_lens, arch)
    if arch == "batchtopk":  # saved for inference: a JumpReLU SAE with threshold θ·1
        theirs.save_inference_model(tmp_path / "lens")
        theirs = sae_lens.SAE.load_from_disk(tmp_path / "lens")
    else:
        theirs.save_model(tmp_path / "lens")
    sae = load_sae(tmp_path / "lens")
    threshold_F = getattr(theirs, "threshold", None)
    with torch.no_grad():
        assert_agree(sae, x_ND, theirs.encode(x_ND), theirs.decode, threshold_F)


def dense(top_acts_NK, top_idx_NK, width):
    return torch.zeros(len(top_acts_NK), width).scatter_(1, top_idx_NK, top_acts_NK.float())


def decode_dense(coder, f_NF):
    """sparsify's decoder on dense codes: it takes the (values, indices) of the top k."""
    top_acts_NK, top_idx_NK = f_NF.topk(coder.cfg.k, dim=1)
    return coder.decode(top_acts_NK, top_idx_NK)


def test_saelab_sae_loads_in_sparsify(tmp_path, x_ND):
    sparsify = pytest.importorskip("sparsify")
    sae = perturbed("topk", d=D_MODEL, width=WIDTH, k=K)
    folder = interop.save_sparsify(sae, tmp_path / "run")
    theirs = sparsify.SparseCoder.load_from_disk(folder)
    assert set(sparsify.SparseCoder.load_many(str(tmp_path / "run"), local=True)) == {"layers.3"}
    with torch.no_grad():
        top_acts, top_idx, _ = theirs.encode(x_ND)
        f_NF = dense(top_acts, top_idx, WIDTH)
    assert_agree(sae, x_ND, f_NF, lambda f_NF: decode_dense(theirs, f_NF))


def test_sparsify_sae_loads_in_saelab(tmp_path, x_ND):
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(0)
    theirs = sparsify.SparseCoder(D_MODEL, sparsify.SparseCoderConfig(num_latents=WIDTH, k=K))
    with torch.no_grad():
        theirs.encoder.bias.normal_(0, 0.3)
        theirs.b_dec.normal_(0, 0.5)
    theirs.save_to_disk(tmp_path / "run" / "layers.2")
    sae = load_sae(tmp_path / "run" / "layers.2")
    assert sae.cfg.hookpoint == "resid_post.2"
    with torch.no_grad():
        top_acts, top_idx, _ = theirs.encode(x_ND)
        f_NF = dense(top_acts, top_idx, WIDTH)
    assert_agree(sae, x_ND, f_NF, lambda f_NF: decode_dense(theirs, f_NF))


def test_residual_sae_trains_on_a_frozen_sae_lens_base(tmp_path, medical_store):
    """The residual paper's setting: a SAELens SAE, loaded, frozen, and a residual SAE
    trained on what it leaves; the base is untouched and the error drops."""
    sae_lens = pytest.importorskip("sae_lens")
    sae_lens_sae(sae_lens, "jumprelu").save_model(tmp_path / "lens")
    base = load_sae(tmp_path / "lens")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    combined = saelab.train_residual(
        base,
        medical_store,
        width=64,
        k=4,
        max_tokens=20_000,
        batch_size=256,
        lr=3e-3,
        progress=False,
    )
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    x_ND = medical_store.acts_ND.float()
    with torch.no_grad():
        base_err = (x_ND - base(x_ND).x_hat).pow(2).sum()
        combined_err = (x_ND - combined(x_ND).x_hat).pow(2).sum()
    assert combined_err < 0.7 * base_err, (combined_err, base_err)


@pytest.mark.slow  # SmolLM2-135M: loading it and a short harvest, ~1 min on 2 cores
def test_sae_lens_round_trip_on_smollm2_activations(tmp_path, medical_texts):
    """saelab -> SAELens's loader on SmolLM2 `resid_post.15` (d = 576), the model the
    README's SAEs are trained on."""
    sae_lens = pytest.importorskip("sae_lens")
    model = saelab.load_model("smollm2-135m", device="cpu")
    store = saelab.harvest(
        model, "resid_post.15", medical_texts[:20], max_tokens=256, ctx_len=64, progress=False
    )
    x_ND = store.get(torch.arange(len(store)))
    sae = perturbed("jumprelu", d=x_ND.shape[1], width=1152)
    folder = interop.save_sae_lens(sae, tmp_path / "lens")
    theirs = sae_lens.SAE.load_from_disk(folder)
    with torch.no_grad():
        assert_agree(sae, x_ND, theirs.encode(x_ND), theirs.decode, theirs.threshold)
