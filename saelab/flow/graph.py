"""Flow graphs: a seed feature's predecessors and successors, chained layer by layer.

Step 4 of cross-layer feature flow (docs/methods.md, "Cross-layer feature flow"). From a
seed feature of `resid_post.L`, `match` is chained backward (the best `resid_post.{L-1}`
predecessor, while `s^R >= res_cut`) and forward (the features of `resid_post.{L+1}` whose
best res-predecessor is the current node, with `s^R >= res_cut`); every residual node gets
its best MLP and attention predecessors when their cosine is `>= module_min`. The paper's
thresholds are unpublished per layer; 0.5 and 0.15 are those of its graphs.
Nodes are `(site, layer, feature)` tuples; edges point from predecessor to successor.
"""

from __future__ import annotations

import re

import networkx as nx
import torch

from saelab.features import feature_stats, logit_effects, top_contexts
from saelab.flow.match import SOURCE_NAMES, FlowMatch, match

RESID = "resid_post"
MODULE_SITES = {"mlp": "mlp_out", "att": "attn_out"}  # source name -> site of its node


def flow_layers(saes: dict) -> list[int]:
    """The layers L >= 1 for which `saes` has all four flow hookpoints."""
    layers = [int(m.group(1)) for m in map(re.compile(r"resid_post\.(\d+)").fullmatch, saes) if m]
    wanted = lambda L: (f"resid_post.{L - 1}", f"mlp_out.{L}", f"attn_out.{L}")
    return sorted(L for L in layers if L >= 1 and all(h in saes for h in wanted(L)))


def _add_node(graph: nx.DiGraph, saes: dict, site: str, layer: int, feature: int) -> tuple:
    node = (site, int(layer), int(feature))
    if node not in graph:
        hookpoint = f"{site}.{layer}"
        label = f"{hookpoint} {saes[hookpoint].latent_label(feature)}"
        attrs = dict(site=site, layer=int(layer), feature=int(feature), hookpoint=hookpoint)
        graph.add_node(node, **attrs, label=label)
    return node


def _attach_modules(graph, saes, m: FlowMatch, feature: int, module_min: float) -> None:
    """Edges from the MLP and attention best matches of a `resid_post.{m.layer}` node."""
    node = (RESID, m.layer, feature)
    for p, source in enumerate(SOURCE_NAMES):
        if source in MODULE_SITES and m.score_FP[feature, p] >= module_min:
            site = MODULE_SITES[source]
            pred = _add_node(graph, saes, site, m.layer, int(m.index_FP[feature, p]))
            graph.add_edge(pred, node, cosine=float(m.score_FP[feature, p]), source=source)


def flow_graph(
    saes: dict,
    seed: tuple[str, int, int],
    layers=None,
    res_cut: float = 0.5,
    module_min: float = 0.15,
    flow_matches: dict[int, FlowMatch] | None = None,
) -> nx.DiGraph:
    """The flow graph of `seed = ("resid_post", layer, feature)` as a networkx DiGraph.

    Nodes `(site, layer, feature)` carry `site`, `layer`, `feature`, `hookpoint`, `label`;
    edges (predecessor -> successor) carry `cosine` and `source` ("res", "mlp", "att").
    `layers`: the blocks the graph may use (default: every layer with all four hookpoints
    in `saes`, `flow_layers`). `flow_matches`: layer -> `FlowMatch` already computed; the
    others are computed here (top-1) as needed. `graph.graph` records the seed and cuts.
    """
    site, layer, feature = seed
    if site != RESID:
        raise ValueError(f"a flow graph grows from a resid_post feature, not a {site} one")
    if f"{RESID}.{layer}" not in saes:
        raise ValueError(f"no SAE at {RESID}.{layer} for the seed {seed}")
    if not 0 <= feature < saes[f"{RESID}.{layer}"].cfg.width:
        raise ValueError(f"seed feature {feature} is outside the SAE at {RESID}.{layer}")
    layers = set(flow_layers(saes) if layers is None else layers)
    matches = dict(flow_matches or {})

    def match_at(L: int) -> FlowMatch:
        if L not in matches:
            matches[L] = match(saes, L, top_k=1)
        return matches[L]

    graph = nx.DiGraph(seed=tuple(seed), res_cut=res_cut, module_min=module_min)
    _add_node(graph, saes, RESID, layer, feature)
    L, f = int(layer), int(feature)
    while L in layers:  # backward along the residual chain
        m = match_at(L)
        _attach_modules(graph, saes, m, f, module_min)
        j, s = int(m.index_FP[f, 0]), float(m.score_FP[f, 0])
        if s < res_cut:
            break
        pred = _add_node(graph, saes, RESID, L - 1, j)
        graph.add_edge(pred, (RESID, L, f), cosine=s, source="res")
        L, f = L - 1, j
    frontier, L = [int(feature)], int(layer) + 1
    while frontier and L in layers:  # forward: every successor that picks the node as its best
        m = match_at(L)
        kept_F = m.score_FP[:, 0] >= res_cut
        successors = []
        for f in frontier:
            for c in ((m.index_FP[:, 0] == f) & kept_F).nonzero().flatten().tolist():
                node = _add_node(graph, saes, RESID, L, c)
                cosine = float(m.score_FP[c, 0])
                graph.add_edge((RESID, L - 1, f), node, cosine=cosine, source="res")
                _attach_modules(graph, saes, m, c, module_min)
                successors.append(c)
        frontier, L = successors, L + 1
    return graph


@torch.no_grad()
def attach_labels(graph: nx.DiGraph, saes: dict, model, stores: dict, top_k: int = 5):
    """Put each node's label material on it, in place, and return the graph.

    Per node: `top_tokens`, `top_values` and `contexts` (its `top_k` top-activating
    tokens in the store of its hookpoint, `saelab.features.top_contexts`), `density`, and
    the `top_k` tokens its decoder row `promoted` and `suppressed` most through the
    unembedding (`saelab.features.logit_effects`). `stores`: hookpoint -> ActivationStore.
    """
    by_hookpoint: dict[str, list] = {}
    for node, attrs in graph.nodes(data=True):
        by_hookpoint.setdefault(attrs["hookpoint"], []).append(node)
    missing = [h for h in by_hookpoint if h not in stores]
    if missing:
        raise ValueError(f"no store for {', '.join(missing)}: label material needs one each")
    for hookpoint, nodes in by_hookpoint.items():
        sae, store = saes[hookpoint], stores[hookpoint]
        stats = feature_stats(sae, store, top_k=top_k)
        for node in nodes:
            feature = graph.nodes[node]["feature"]
            contexts = top_contexts(stats, store, model.tokenizer, feature)
            effects = logit_effects(sae, model, feature, top_k=top_k)
            graph.nodes[node].update(
                top_tokens=[c.token for c in contexts],
                top_values=[c.value for c in contexts],
                contexts=contexts,
                density=float(stats.density_F[feature]),
                promoted=effects.promoted,
                suppressed=effects.suppressed,
            )
    return graph
