"""Views for `FlowExplorer`: pure functions from a flow graph (`saelab.flow.flow_graph`) and a
steering plan (`saelab.steer.from_graph`) to dropdown options and HTML strings, styled by the
classes of `STYLE`. A node's contexts and logit effects reuse `feature_html`'s renderers.

Class names (`fl-*`) are what page CSS selects on; each section's outermost element carries
the `data-testid` of the UI contract (`flow-feature`, `flow-plan`, `flow-unsteered`,
`flow-steered`) that the browser tests select on.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from saelab.figures.flow import LANES  # resid_post, mlp_out, attn_out: top to bottom

from .feature_html import show_piece

#: Every class the views use, once; the explorer shows this block beside them.
STYLE = """<style>
.fl-edges { border-collapse: collapse; margin: 4px 0; }
.fl-edges td, .fl-edges th { padding: 0 6px; text-align: left; }
.fl-edges .fl-cosine { text-align: right; color: #555; }
.fl-text {
  white-space: pre-wrap; font-family: monospace; border: 1px solid #ddd; padding: 6px;
  margin: 0; min-height: 3em;
}
.fl-prompt { color: #888; }
.fl-plan { color: #555; font-size: smaller; }
</style>"""


def node_order(graph, node) -> tuple:
    """Sort key of a node: layer, then lane (resid, mlp, attn), then feature."""
    attrs = graph.nodes[node]
    site = attrs["site"]
    lane = LANES.index(site) if site in LANES else len(LANES)
    return (int(attrs["layer"]), lane, str(site), int(attrs["feature"]))


def node_title(graph, node, top_k: int = 3) -> str:
    """A node's label with its first `top_k` top tokens once `attach_labels` ran."""
    attrs = graph.nodes[node]
    title = str(attrs.get("label") or f"{attrs['hookpoint']} latent {attrs['feature']}")
    tokens = attrs.get("top_tokens") or []
    if tokens and top_k > 0:
        title += ": " + ", ".join(repr(t) for t in tokens[:top_k])
    return title


def node_options(graph) -> list[tuple[str, tuple]]:
    """The node dropdown's `(title, node)` options: every node once, in `node_order`."""
    nodes = sorted(graph.nodes, key=lambda n: node_order(graph, n))
    return [(node_title(graph, n), n) for n in nodes]


def edges_html(graph, node) -> str:
    """The node's predecessors and successors in the graph, with each edge's source kind
    (res, mlp, att) and decoder cosine."""

    def rows(pairs, direction: str) -> list[str]:
        out = []
        for other, attrs in pairs:
            cosine = attrs.get("cosine", float("nan"))
            out.append(
                f"<tr><td>{direction}</td><td>{html.escape(str(attrs.get('source', '')))}</td>"
                f"<td>{html.escape(node_title(graph, other))}</td>"
                f"<td class='fl-cosine'>{cosine:.3f}</td></tr>"
            )
        return out

    incoming = [(u, graph.edges[u, node]) for u in graph.predecessors(node)]
    outgoing = [(v, graph.edges[node, v]) for v in graph.successors(node)]
    body = rows(incoming, "from") + rows(outgoing, "to")
    if not body:
        return "<p><i>no edges: the graph is this node alone</i></p>"
    return (
        "<table class='fl-edges'><tr><th></th><th>source</th><th>node</th><th>cosine</th></tr>"
        + "".join(body)
        + "</table>"
    )


def feature_panel_html(body: str) -> str:
    """The selected node's panel (`body`: its header, contexts, logits and edges)."""
    return f"<div data-testid='flow-feature'>{body}</div>"


def generated_html(title: str, prompt: str, text: str | None) -> str:
    """A titled box with the prompt (greyed) followed by the generated `text` (None: not run
    yet); `title` ("unsteered" or "steered") names its testid, `flow-<title>`."""
    body = (
        "<i>press generate</i>"
        if text is None
        else f"<span class='fl-prompt'>{show_piece(prompt)}</span>{html.escape(text)}"
    )
    testid = html.escape(f"flow-{title}", quote=True)
    return (
        f"<div data-testid='{testid}'><h4>{html.escape(title)}</h4>"
        f"<pre class='fl-text'>{body}</pre></div>"
    )


def plan_html(plan: Sequence, schedule: str, layer: int, strength: float) -> str:
    """One line naming what the steered text promoted: each term's hookpoint, feature and
    coefficient (activation units along the unit decoder direction)."""
    terms = ", ".join(
        f"{html.escape(str(t.hookpoint))} #{t.feature} ({t.coefficient:+.3g})" for t in plan
    )
    where = f"layer {layer}" if schedule == "single" else f"layers <= {layer}"
    return (
        f"<div class='fl-plan' data-testid='flow-plan'>{schedule} ({where}), "
        f"strength {strength:g}: {len(plan)} term(s): {terms or '—'}</div>"
    )
