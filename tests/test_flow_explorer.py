"""FlowExplorer on stories260K with tiny TopK SAEs at layers 1-3: the graph's nodes in the
dropdown and the figure, each node's panel against brute force, clicks, and steering (zero
strength reproduces the unsteered text, a large one changes it)."""

import html
import re

import pytest
import torch

import saelab
from saelab import steer
from saelab.data import token_str
from saelab.models import final_norm_weight, hf_module
from saelab.widgets import FlowExplorer
from saelab.widgets.feature_html import show_piece

HOOKS = [
    "resid_post.1",
    "resid_post.2",
    "mlp_out.2",
    "attn_out.2",
    "resid_post.3",
    "mlp_out.3",
    "attn_out.3",
]
PROMPT = "Once upon a time"
NEW_TOKENS = 12
SITES = ("resid_post", "mlp_out", "attn_out")  # the node traces of the figure, by name


@pytest.fixture(scope="module")
def stores(stories, medical_texts):
    return saelab.harvest(
        stories, HOOKS, medical_texts, max_tokens=2048, ctx_len=64, progress=False
    )


@pytest.fixture(scope="module")
def saes(stores):
    return {
        h: saelab.train_sae(stores[h], "topk", 64, batch_size=128, seed=n, k=4, progress=False)
        for n, h in enumerate(HOOKS)
    }


def codes(saes, stores, hookpoint):
    with torch.no_grad():
        return saes[hookpoint].encode(stores[hookpoint].acts_ND)


@pytest.fixture(scope="module")
def seed(saes, stores):
    """The resid_post.3 feature that fires most often."""
    return ("resid_post", 3, int((codes(saes, stores, "resid_post.3") != 0).sum(0).argmax()))


@pytest.fixture(scope="module")
def explorer(stories, saes, stores, seed):
    # cuts at 0: every residual node keeps its best res, mlp and att predecessor
    return FlowExplorer(
        stories,
        saes,
        stores,
        seed,
        res_cut=0.0,
        module_min=0.0,
        top_k=5,
        prompt=PROMPT,
        max_new_tokens=NEW_TOKENS,
    )


def best_match(saes, target, feature, source):
    """Brute force float64: the `source` feature whose unit decoder row is closest to the
    target feature's."""
    unit = lambda W: W / W.norm(dim=1, keepdim=True)
    t_D = unit(saes[target].W_dec_FD.detach().double())[feature]
    return int((unit(saes[source].W_dec_FD.detach().double()) @ t_D).argmax())


def expected_nodes(saes, seed):
    """The graph by hand: the seed's best resid_post.2 predecessor and its best resid_post.1
    one, and the best mlp_out / attn_out match of each of the two deeper residual nodes."""
    r3 = seed[2]
    r2 = best_match(saes, "resid_post.3", r3, "resid_post.2")
    r1 = best_match(saes, "resid_post.2", r2, "resid_post.1")
    nodes = {("resid_post", 3, r3), ("resid_post", 2, r2), ("resid_post", 1, r1)}
    for layer, feature in ((3, r3), (2, r2)):
        for site in ("mlp_out", "attn_out"):
            m = best_match(saes, f"resid_post.{layer}", feature, f"{site}.{layer}")
            nodes.add((site, layer, m))
    return nodes


def test_dropdown_lists_exactly_the_graph_nodes(explorer, saes, seed):
    values = [value for _, value in explorer.node.options]
    assert len(values) == len(set(values)) == explorer.graph.number_of_nodes() == 7
    assert set(values) == set(explorer.graph.nodes) == expected_nodes(saes, seed)
    assert [v[1] for v in values] == sorted(v[1] for v in values)  # by layer
    titles = [title for title, _ in explorer.node.options]
    for title, node in explorer.node.options:
        tokens = explorer.graph.nodes[node]["top_tokens"]
        assert title.startswith(f"{node[0]}.{node[1]} latent {node[2]}")
        assert (repr(tokens[0]) in title) if tokens else True
    assert len(set(titles)) == len(titles)


def test_figure_has_one_marker_per_node(explorer):
    traces = [t for t in explorer.figure.data if t.name in SITES]
    markers = [
        (t.name, int(x), int(f)) for t in traces for x, f in zip(t.x, t.customdata, strict=True)
    ]
    assert len(markers) == explorer.graph.number_of_nodes()
    assert set(markers) == set(explorer.graph.nodes)
    edges = [t for t in explorer.figure.data if t.name not in SITES]
    assert len(edges) == explorer.graph.number_of_edges() == 6


def first_act_token(panel: str) -> str | None:
    found = re.search(r"<span class='fe-act'[^>]*>(.*?)</span>", panel, flags=re.S)
    return None if found is None else found.group(1)


def test_selecting_a_node_shows_its_top_token_and_logit_effects(explorer, stories, saes, stores):
    W_U = hf_module(stories).get_output_embeddings().weight.detach().float()
    gain = final_norm_weight(stories).detach().float()
    shown = set()
    for node in sorted(explorer.graph.nodes, key=str):
        site, layer, feature = node
        hookpoint = f"{site}.{layer}"
        explorer.select(node)
        assert explorer.node.value == node
        panel = explorer.feature_html.value
        code_N = codes(saes, stores, hookpoint)[:, feature]
        assert f"({int((code_N != 0).sum())} of {len(code_N)} tokens)" in panel
        if code_N.max() > 0:
            row = int(code_N.argmax())
            store = stores[hookpoint]
            token = store.tokens_CT[store.context_N[row], store.position_N[row]]
            expected = show_piece(token_str(stories.tokenizer, int(token)))
            assert first_act_token(panel) == expected
            assert explorer.contexts[0].value == pytest.approx(float(code_N.max()), rel=1e-5)
            shown.add(expected)
        else:
            assert first_act_token(panel) is None
        best = int((W_U @ (gain * saes[hookpoint].W_dec_FD[feature].detach())).argmax())
        promoted = show_piece(token_str(stories.tokenizer, best))
        assert f"<td class='fe-piece'>{promoted}</td>" in panel
        # the figure highlights this node alone
        for t in explorer.figure.data:
            if t.name in SITES:
                picked = [(t.name, int(t.x[i]), int(t.customdata[i])) for i in t.selectedpoints]
                assert picked == ([node] if node[0] == t.name else [])
    assert len(shown) >= 2  # the panel really changed between nodes


def test_clicking_a_marker_selects_its_node(explorer, seed):
    from plotly.callbacks import InputDeviceState, Points

    explorer.select(seed)
    trace = next(t for t in explorer.figure.data if t.name == "mlp_out")
    i = len(trace.x) - 1
    node = ("mlp_out", int(trace.x[i]), int(trace.customdata[i]))
    trace._dispatch_on_click(Points([i], [trace.x[i]], [trace.y[i]], "mlp_out"), InputDeviceState())
    assert explorer.node.value == node != seed
    assert f"mlp_out.{node[1]} latent {node[2]}" in explorer.feature_html.value
    with pytest.raises(ValueError, match="not a node"):
        explorer.select(("resid_post", 4, 0))


def test_zero_strength_reproduces_the_unsteered_text_and_a_large_one_changes_it(explorer, stories):
    plain = steer.generate(stories, PROMPT, (), max_new_tokens=NEW_TOKENS)[0]
    r2 = next(n for n in explorer.graph if n[:2] == ("resid_post", 2))
    explorer.select(r2)
    explorer.schedule.value = "cumulative"
    explorer.strength.value = 0.0
    unsteered, steered = explorer.generate()
    assert unsteered == steered == plain
    # cumulative at layer 2: the nodes of layers 1 and 2, never layer 3
    by_hand = {(f"{s}.{L}", f) for s, L, f in explorer.graph if L <= 2}
    assert {(t.hookpoint, t.feature) for t in explorer.plan} == by_hand
    explorer.strength.value = explorer.strength.max
    unsteered, steered = explorer.generate()
    assert unsteered == plain and steered != plain
    assert show_piece(PROMPT) in explorer.steered_html.value
    assert html.escape(steered) in explorer.steered_html.value
    assert html.escape(plain) in explorer.unsteered_html.value
    # single layer at the selected node's layer, through the button
    explorer.schedule.value = "single"
    explorer.run.click()
    assert explorer.status.value == "" and not explorer.run.disabled
    assert {(t.hookpoint, t.feature) for t in explorer.plan} == {
        (f"{s}.{L}", f) for s, L, f in explorer.graph if L == 2
    }
    typical = steer.typical_activation(
        explorer.saes["resid_post.2"], explorer.stores["resid_post.2"]
    )
    term = next(t for t in explorer.plan if t.hookpoint == "resid_post.2")
    row_norm = float(explorer.saes["resid_post.2"].W_dec_FD[r2[2]].detach().norm())
    expected = explorer.strength.max * float(typical[r2[2]]) * row_norm
    assert term.coefficient == pytest.approx(expected, rel=1e-5)


def section_with_testid(html_text: str, testid: str) -> str:
    found = re.search(rf"<div data-testid='{testid}'>(.*)</div>", html_text, flags=re.S)
    assert found, f"no data-testid={testid!r} section"
    return found.group(1)


def test_ui_contract_classes_and_testids(explorer, seed):
    """The selectors tests/browser finds the controls and views by (notes: UI contract)."""
    controls = {
        "saelab-flow-graph": explorer.figure,
        "saelab-flow-node": explorer.node,
        "saelab-flow-schedule": explorer.schedule,
        "saelab-flow-strength": explorer.strength,
        "saelab-flow-prompt": explorer.prompt,
        "saelab-flow-run": explorer.run,
    }
    for css_class, widget in controls.items():
        assert css_class in widget._dom_classes
    explorer.select(seed)
    panel = section_with_testid(explorer.feature_html.value, "flow-feature")
    assert f"resid_post.3 latent {seed[2]}" in panel
    explorer.strength.value = explorer.strength.max
    unsteered, steered = explorer.generate()
    assert html.escape(steered) in section_with_testid(explorer.steered_html.value, "flow-steered")
    unsteered_box = section_with_testid(explorer.unsteered_html.value, "flow-unsteered")
    assert html.escape(unsteered) in unsteered_box and html.escape(steered) not in unsteered_box
    assert "strength 20:" in explorer.plan_html.value.split("data-testid='flow-plan'>")[1]


def test_missing_store_is_refused(stories, saes, stores, seed):
    partial = {h: s for h, s in stores.items() if h != "attn_out.2"}
    with pytest.raises(ValueError, match="attn_out.2: no store"):
        FlowExplorer(stories, saes, partial, seed, res_cut=0.0, module_min=0.0)
