"""Steered generation (saelab.steer): plans and their edits in the forward pass, graph
schedules, promotion units, typical activations; against hand computations, forward hooks
and planted SAEs."""

import math

import networkx as nx
import pytest
import torch
from conftest import HOOK

import saelab
from saelab import interventions, steer
from saelab.models import hook_module, parse_hookpoint

PROMPT = "Once upon a time"


def aligned_sae(kind="relu", d=64, width=16, scale=3.0, seed=0, **options):
    """An SAE whose decoder rows are orthonormal and whose encoder is their transpose (no
    biases), trained-scale `scale` folded in: the code of latent f is relu(scale · h·q_f)."""
    sae = saelab.make_sae(kind, d, width, seed=seed, **options)
    q_DF, _ = torch.linalg.qr(torch.randn(d, width, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        sae.W_dec_FD.copy_(q_DF.T)
        sae.W_enc_DF.copy_(q_DF)
        sae.b_enc_F.zero_()
        sae.b_dec_D.zero_()
    sae.fold_input_scale(scale)
    sae.cfg.hookpoint = HOOK
    return sae, q_DF.T.contiguous()


def hooked_logits(stories, ids_BT, hookpoint, fn):
    """Logits of the plain HF module with a forward hook `h -> fn(h)` at `hookpoint`."""
    module = hook_module(stories._module, parse_hookpoint(stories, hookpoint))

    def hook(mod, inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return stories._module(ids_BT).logits
    finally:
        handle.remove()


def test_zero_strength_and_r1_generate_the_unsteered_text(stories):
    sae, _ = aligned_sae()
    typical = torch.full((16,), 5.0)
    plans = [[steer.promote(sae, 3, 0.0, typical)], [steer.suppress(sae, 3, 1.0)]]
    for n_samples, options in [
        (1, {"do_sample": False}),
        (2, {"do_sample": True, "temperature": 1.3, "seed": 7}),
    ]:
        _, plain = steer.generate_ids(stories, PROMPT, (), 8, n_samples=n_samples, **options)
        for plan in plans:
            _, steered = steer.generate_ids(
                stories, PROMPT, plan, 8, n_samples=n_samples, **options
            )
            assert all(torch.equal(a, b) for a, b in zip(plain, steered, strict=True))
    texts = steer.generate(stories, PROMPT, plans[0], 8, n_samples=2, **options)
    assert texts == [stories.tokenizer.decode(p[5:], skip_special_tokens=True) for p in plain]
    # sampled: sample i is seeded by seed + i, so samples differ and a call repeats exactly
    _, again = steer.generate_ids(stories, PROMPT, (), 8, **{**options, "seed": 8})
    assert not torch.equal(plain[0], plain[1]) and torch.equal(plain[1], again[0])


def test_promotion_steers_the_generated_positions_not_only_the_prompt(stories):
    sae = saelab.make_sae("relu", 64, 32, seed=1)
    sae.cfg.hookpoint = HOOK
    plan = [steer.promote(sae, 3, 30.0)]  # unit decoder rows: 30 activation units along d_3
    ids_1T, (steered,) = steer.generate_ids(stories, PROMPT, plan, 8)
    _, (plain,) = steer.generate_ids(stories, PROMPT, (), 8)
    start = ids_1T.shape[1]
    assert not torch.equal(steered, plain)
    # teacher-forced, the plan on every position reproduces each greedy token ...
    edits = steer.plan_edits(stories, plan)
    full = interventions.logits(stories, steered[None], edits)[0]
    assert torch.equal(full[start - 1 : -1].argmax(-1), steered[start:])
    # ... and an independent hook adding 30·d_3 everywhere gives the same logits
    d_D = sae.W_dec_FD[3].detach() / sae.W_dec_FD[3].detach().norm()
    hooked = hooked_logits(stories, steered[None], HOOK, lambda h: h + 30.0 * d_D)[0]
    torch.testing.assert_close(full, hooked, atol=1e-4, rtol=0)
    # steering the prompt positions alone does not produce these tokens
    prompt_only_BT = torch.zeros(1, len(steered), dtype=torch.bool)
    prompt_only_BT[:, :start] = True
    edit = interventions.add_direction(stories, HOOK, d_D, 30.0, positions=prompt_only_BT)
    prompt_only = interventions.logits(stories, steered[None], [edit])[0]
    assert not torch.equal(prompt_only[start - 1 : -1].argmax(-1), steered[start:])
    torch.testing.assert_close(prompt_only[:start], full[:start], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,options", [("relu", {}), ("topk", {"k": 4})])
def test_suppression_removes_flips_and_scales_the_code(stories, kind, options):
    sae, q_FD = aligned_sae(kind, **options)
    f = 5
    h_BTD = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h_BTD = (h_BTD + 4.0 * q_FD[f].double()).float()  # latent f fires strongly everywhere
    code = lambda h: sae.encode(h.reshape(-1, 64)).detach()  # noqa: E731
    pre = lambda h: sae.pre_acts(h.reshape(-1, 64)).detach()  # noqa: E731
    a_N = code(h_BTD)[:, f]
    expected_a = 3.0 * (h_BTD.double().reshape(-1, 64) @ q_FD[f].double())  # scale · h·q_f
    torch.testing.assert_close(a_N.double(), expected_a, atol=1e-4, rtol=1e-5)
    assert (a_N > 1).all()

    def edited(r):
        (edit,) = steer.plan_edits(stories, [steer.suppress(sae, f, r)])
        assert edit.positions is None and str(edit.hookpoint) == HOOK
        return edit.fn(h_BTD)

    assert torch.equal(edited(1.0), h_BTD)
    removed = edited(0.0)
    assert code(removed)[:, f].abs().max() < 1e-4
    torch.testing.assert_close(pre(edited(-1.0))[:, f], -pre(h_BTD)[:, f], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(code(edited(2.0))[:, f], 2 * a_N, atol=1e-4, rtol=1e-5)
    # the other latents' pre-activations are untouched (orthogonal decoder rows)
    others = [i for i in range(16) if i != f]
    torch.testing.assert_close(pre(removed)[:, others], pre(h_BTD)[:, others], atol=1e-4, rtol=0)


def test_suppression_in_the_forward_matches_a_projection_hook(stories, medical_tokens):
    sae, q_FD = aligned_sae("relu", seed=4)
    plan = [steer.suppress(sae, 2, 0.0), steer.suppress(sae, 9, -1.0)]  # two at one hookpoint
    q2, q9 = q_FD[2], q_FD[9]

    def by_hand(h):  # code/scale · row = relu(h·q) q: remove latent 2, then flip latent 9
        h = h - (h @ q2).relu()[..., None] * q2
        return h - 2 * (h @ q9).relu()[..., None] * q9

    ids_BT = medical_tokens[:2, :32]
    expected = hooked_logits(stories, ids_BT, HOOK, by_hand)
    got = interventions.logits(stories, ids_BT, steer.plan_edits(stories, plan))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (got - interventions.logits(stories, ids_BT)).abs().max() > 1e-2


NODES = [("resid_post", 1, 3), ("mlp_out", 2, 5), ("resid_post", 2, 7), ("attn_out", 3, 1)]


def flow_like_graph():
    """Four nodes over layers 1-3, with the attributes saelab.flow.flow_graph gives them."""
    g = nx.DiGraph()
    for site, layer, f in NODES:
        g.add_node((site, layer, f), site=site, layer=layer, feature=f, hookpoint=f"{site}.{layer}")
    g.add_edges_from([(NODES[0], NODES[2]), (NODES[1], NODES[2]), (NODES[2], NODES[3])], cosine=0.5)
    return g


def test_from_graph_schedules_give_the_hand_computed_coefficients():
    saes = {}
    for i, hp in enumerate(["resid_post.1", "mlp_out.2", "resid_post.2", "attn_out.3"]):
        saes[hp] = saelab.make_sae("relu", 64, 8, seed=i)
    saes["mlp_out.2"].fold_input_scale(2.0)  # its decoder rows now have norm 1/2
    typical = {"resid_post.2": torch.tensor([1.0] * 7 + [0.5])}  # feature 7: 0.5; others: 1
    g = flow_like_graph()
    # node order (layer, hookpoint, feature); per-node factor typical · ||row||: 1, .5, .5, 1
    factor = [1.0, 0.5, 0.5, 1.0]
    cases = {
        ("cumulative", None): [4.0, 4.0, 4.0, 4.0],
        ("cumulative", 2): [4.0, 4.0, 4.0],
        ("single", 2): [4.0, 4.0],
        ("exponential", None): [4 * math.exp(-0.05 * layer) for layer in (1, 2, 2, 3)],
        ("linear", None): [4.0, 2.5, 2.5, 1.0],
        ("linear", 2): [4.0, 1.0, 1.0],
    }
    for (schedule, layer), s_l in cases.items():
        plan = steer.from_graph(g, saes, 4.0, schedule, layer=layer, typical=typical)
        fac = factor[1:3] if schedule == "single" else factor[: len(s_l)]
        assert [t.coefficient for t in plan] == pytest.approx(
            [s * f for s, f in zip(s_l, fac, strict=True)], rel=1e-6
        )
    plan = steer.from_graph(g, saes, 4.0, "cumulative")
    assert [(t.hookpoint, t.feature) for t in plan] == [(f"{s}.{lay}", f) for s, lay, f in NODES]
    row = saes["mlp_out.2"].W_dec_FD[5].detach()
    torch.testing.assert_close(plan[1].direction_D, row / row.norm())
    assert all(t.mode == "add" for t in plan)
    with pytest.raises(ValueError, match="layer="):
        steer.from_graph(g, saes, 4.0, "single")
    with pytest.raises(ValueError, match="no SAE"):
        steer.from_graph(g, {"resid_post.1": saes["resid_post.1"]}, 4.0)
    with pytest.raises(ValueError, match="no graph node"):
        steer.from_graph(g, saes, 4.0, "single", layer=0)


def test_promote_units_and_random_control():
    sae = saelab.make_sae("relu", 64, 32, seed=2)
    sae.fold_input_scale(4.0)
    sae.cfg.hookpoint = HOOK
    typical = torch.arange(32, dtype=torch.float64) / 10
    term = steer.promote(sae, 5, 3.0, typical)
    # coefficient · direction is the decoder row at code strength · typical
    torch.testing.assert_close(
        term.coefficient * term.direction_D, 3.0 * 0.5 * sae.W_dec_FD[5].detach()
    )
    assert term.coefficient == pytest.approx(3.0 * 0.5 / 4.0, rel=1e-6)
    control = steer.random_control(sae, 6, 3.0, typical, seed=1)
    features = [t.feature for t in control]
    assert len(set(features)) == 6 and features == sorted(features)
    assert features == [t.feature for t in steer.random_control(sae, 6, 1.0, typical, seed=1)]
    assert features != [t.feature for t in steer.random_control(sae, 6, 1.0, typical, seed=2)]
    assert [t.coefficient for t in control] == pytest.approx([3.0 * f / 10 / 4 for f in features])


def test_typical_activation_against_dense_codes(medical_store):
    sae = saelab.make_sae("relu", 64, 24, seed=5)
    with torch.no_grad():
        sae.b_enc_F.copy_(torch.linspace(-3, 0.5, 24))  # some latents fire rarely or never
    codes_NF = sae.encode(medical_store.get(torch.arange(len(medical_store)))).detach().double()
    mean = steer.typical_activation(sae, medical_store)
    q99 = steer.typical_activation(sae, medical_store, quantile=0.99, batch_size=300)
    for f in range(24):
        nz = codes_NF[:, f][codes_NF[:, f] != 0]
        want_mean = nz.mean().item() if len(nz) else 0.0
        want_q = torch.quantile(nz, 0.99).item() if len(nz) else 0.0
        assert mean[f].item() == pytest.approx(want_mean, rel=1e-5, abs=1e-9)
        assert q99[f].item() == pytest.approx(want_q, rel=1e-5, abs=1e-9)
    assert (q99 == 0).any() and (q99 > 0).sum() > 5  # both cases exercised
