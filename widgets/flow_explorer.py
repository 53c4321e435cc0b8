"""Interactive cross-layer feature flow: a seed feature's flow graph inline, each node's panel,
and steered generation along the graph (docs/methods.md, "Cross-layer feature flow", steps 4
and 6).

``FlowExplorer(model, saes, stores, seed)`` is an ``ipywidgets.VBox``: end a notebook cell
with it to see the flow graph of ``seed = ("resid_post", layer, feature)`` (drawn by
``saelab.figures.flow_graph_figure``: layers left to right, resid / mlp / attn lanes, edge
width by cosine, hover shows top tokens). Clicking a node (or picking it in the dropdown)
shows that feature's top contexts, logit effects and graph edges. The steering box promotes
the graph's nodes (``saelab.steer.from_graph`` at the selected node's layer, single layer or
cumulative, in units of each feature's typical code) and shows the unsteered and steered
continuations of a prompt side by side. Every number comes from ``saelab.flow``,
``saelab.features`` and ``saelab.steer``; ``flow_html`` and ``feature_html`` render them.
"""

from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from saelab import flow, steer
from saelab.features import feature_stats, logit_effects, top_contexts
from saelab.figures import flow_graph_figure
from saelab.steer import generate as generate_text  # decodes through interventions.generate

from . import feature_html as views
from . import flow_html

SCHEDULE_OPTIONS = (("single layer", "single"), ("cumulative", "cumulative"))
UNSELECTED_OPACITY = 0.35  # other nodes fade when one is selected


class FlowExplorer(widgets.VBox):
    """The flow graph of ``seed`` over ``saes``, a per-node panel and a steering box.

    Arguments: ``saes`` hookpoint -> SAE (``resid_post.L``, ``mlp_out.L``, ``attn_out.L``, as
    ``saelab.flow.flow_graph`` reads them); ``stores`` hookpoint -> ActivationStore for every
    hookpoint the graph uses (one ``saelab.harvest``); ``graph`` a ready flow graph (default:
    ``flow.flow_graph(saes, seed, res_cut=res_cut, module_min=module_min)``; label material is
    attached when missing); ``top_k`` top contexts and logit tokens per panel; ``window``
    neighbours each side of a context; ``typical`` hookpoint -> ``[F]`` typical codes
    (default: ``steer.typical_activation`` of each graph hookpoint, computed on the first
    generation); ``prompt``, ``strength``, ``max_strength``, ``schedule`` the steering box's
    starting values; ``max_new_tokens``, ``do_sample``, ``sample_seed`` go to
    ``steer.generate``.

    Attributes: ``graph`` (networkx DiGraph), ``figure`` (plotly FigureWidget), ``node``
    (Dropdown of ``(title, node)``), ``status``, ``feature_html``, ``plan_html``,
    ``unsteered_html``, ``steered_html`` (ipywidgets.HTML), ``prompt`` (Textarea), ``schedule``
    (ToggleButtons "single" / "cumulative"), ``strength`` (FloatSlider), ``run`` (Button),
    ``stats`` (hookpoint -> ``FeatureStats``, filled as nodes are shown), ``contexts`` (the
    selected node's ``Context`` list) and ``plan`` (the last generation's steering terms).
    """

    def __init__(
        self,
        model,
        saes: dict,
        stores: dict,
        seed: tuple[str, int, int],
        *,
        graph=None,
        res_cut: float = 0.5,
        module_min: float = 0.15,
        top_k: int = 10,
        window: int = 4,
        typical: dict[str, torch.Tensor] | None = None,
        prompt: str = "I think ",
        strength: float = 4.0,
        max_strength: float = 20.0,
        schedule: str = "cumulative",
        max_new_tokens: int = 36,
        do_sample: bool = False,
        sample_seed: int = 0,
    ):
        if top_k < 1 or window < 0:
            raise ValueError(f"need top_k >= 1 and window >= 0, got top_k={top_k}, window={window}")
        if schedule not in dict(SCHEDULE_OPTIONS).values():
            raise ValueError(f"schedule must be 'single' or 'cumulative', got {schedule!r}")
        if graph is None:
            graph = flow.flow_graph(saes, seed, res_cut=res_cut, module_min=module_min)
        hookpoints = sorted({str(a["hookpoint"]) for _, a in graph.nodes(data=True)})
        for what, given in (("SAE", saes), ("store", stores)):
            missing = [h for h in hookpoints if h not in given]
            if missing:
                raise ValueError(f"the graph uses {', '.join(missing)}: no {what} given for it")
        if any("top_tokens" not in a for _, a in graph.nodes(data=True)):
            flow.attach_labels(graph, saes, model, stores, top_k=min(top_k, 5))
        self.model, self.saes, self.stores, self.graph = model, saes, stores, graph
        self.top_k, self.window, self.hookpoints = top_k, window, hookpoints
        self.generate_options = dict(
            max_new_tokens=max_new_tokens, do_sample=do_sample, seed=sample_seed
        )
        self.stats: dict = {}
        self.contexts: list = []
        self.plan: list = []
        self._typical = None if typical is None else dict(typical)
        self._unsteered: dict[tuple, str] = {}  # (prompt, options) -> text: needs no plan
        start = tuple(seed) if tuple(seed) in graph else min(graph, key=self._order)
        self._build(start, prompt, strength, max_strength, schedule)
        self.refresh()

    def _build(self, start, prompt: str, strength: float, max_strength: float, schedule) -> None:
        """Create the controls and views, lay them out and wire their events."""
        self.figure = go.FigureWidget(flow_graph_figure(self.graph))
        self.node = widgets.Dropdown(
            options=flow_html.node_options(self.graph),
            value=start,
            description="node",
            layout={"width": "520px"},
        )
        self.status = widgets.HTML()
        self.feature_html = widgets.HTML()
        self.prompt = widgets.Textarea(
            value=prompt, description="prompt", layout={"width": "60%", "height": "60px"}
        )
        self.schedule = widgets.ToggleButtons(
            options=SCHEDULE_OPTIONS, value=schedule, description="schedule"
        )
        self.strength = widgets.FloatSlider(
            value=strength, min=0.0, max=max_strength, step=0.5, description="strength"
        )
        self.run = widgets.Button(description="generate", icon="play")
        self.plan_html = widgets.HTML()
        self.unsteered_html = widgets.HTML(layout={"width": "50%"})
        self.steered_html = widgets.HTML(layout={"width": "50%"})
        super().__init__(
            children=[
                widgets.HTML(views.STYLE + flow_html.STYLE),
                self.figure,
                self.node,
                self.status,
                self.feature_html,
                widgets.HTML("<h4>Steer along the graph</h4>"),
                widgets.HBox([self.prompt, widgets.VBox([self.schedule, self.strength])]),
                widgets.HBox([self.run, self.plan_html]),
                widgets.HBox([self.unsteered_html, self.steered_html]),
            ]
        )
        for widget, name in (
            (self.figure, "graph"),
            (self.node, "node"),
            (self.schedule, "schedule"),
            (self.strength, "strength"),
            (self.prompt, "prompt"),
            (self.run, "run"),
        ):
            widget.add_class(f"saelab-flow-{name}")  # the UI contract's selectors
        self._show_texts(None, None)
        self.node.observe(self._on_node, names="value")
        for trace in self._node_traces():
            trace.on_click(self._on_click)
        self.run.on_click(self._on_run)

    # --- public API ----------------------------------------------------------------------------
    def select(self, node) -> None:
        """Show ``node`` (a ``(site, layer, feature)`` of the graph; ValueError otherwise)."""
        node = tuple(node)
        if node not in self.graph:
            raise ValueError(f"{node} is not a node of this flow graph")
        if self.node.value != node:
            self.node.value = node  # the observer redraws
        else:
            self.refresh()

    def refresh(self) -> None:
        """Redraw the selected node's panel and its highlight in the figure."""
        node = self.node.value
        attrs = self.graph.nodes[node]
        hookpoint, feature = str(attrs["hookpoint"]), int(attrs["feature"])
        sae, store = self.saes[hookpoint], self.stores[hookpoint]
        stats = self.feature_stats(hookpoint)
        self.contexts = top_contexts(
            stats, store, self.model.tokenizer, feature, window=self.window, sae=sae
        )
        effects = logit_effects(sae, self.model, feature, top_k=self.top_k)
        label = str(attrs.get("label") or sae.latent_label(feature))
        self.feature_html.value = flow_html.feature_panel_html(
            views.header_html(stats, feature, label, int(sae.cfg.width))
            + "<div style='display:flex; gap:16px'>"
            + f"<div>{views.contexts_html(self.contexts, float(stats.max_act_F[feature]))}</div>"
            + f"<div>{views.logits_html(effects)}</div></div>"
            + flow_html.edges_html(self.graph, node)
        )
        self._highlight(node)

    def feature_stats(self, hookpoint: str):
        """``saelab.features.feature_stats`` of the hookpoint's SAE over its store (cached)."""
        if hookpoint not in self.stats:
            sae, store = self.saes[hookpoint], self.stores[hookpoint]
            self.stats[hookpoint] = feature_stats(sae, store, top_k=self.top_k)
        return self.stats[hookpoint]

    def typical(self) -> dict[str, torch.Tensor]:
        """Hookpoint -> ``[F]`` typical codes used as the unit of strength (given, or
        ``steer.typical_activation`` of every graph hookpoint, computed once)."""
        if self._typical is None:
            self._typical = {
                h: steer.typical_activation(self.saes[h], self.stores[h]) for h in self.hookpoints
            }
        return self._typical

    def generate(self) -> tuple[str, str]:
        """Generate from the prompt unsteered and steered by the graph's nodes (the schedule
        at the selected node's layer, the slider's strength); show both, return both."""
        layer = int(self.graph.nodes[self.node.value]["layer"])
        schedule, strength = self.schedule.value, float(self.strength.value)
        plan = steer.from_graph(
            self.graph, self.saes, strength, schedule, layer=layer, typical=self.typical()
        )
        prompt, options = self.prompt.value, self.generate_options
        key = (prompt, *sorted(options.items()))
        if key not in self._unsteered:
            self._unsteered[key] = generate_text(self.model, prompt, (), **options)[0]
        unsteered = self._unsteered[key]
        steered = generate_text(self.model, prompt, plan, **options)[0]
        self.plan = plan
        self.plan_html.value = flow_html.plan_html(plan, schedule, layer, strength)
        self._show_texts(unsteered, steered)
        return unsteered, steered

    # --- internals -----------------------------------------------------------------------------
    def _order(self, node) -> tuple:
        return flow_html.node_order(self.graph, node)

    def _node_traces(self) -> list:
        """The figure's marker traces, one per site: named by site, x the layer, customdata
        the feature (as ``flow_graph_figure`` draws them)."""
        sites = {str(a["site"]) for _, a in self.graph.nodes(data=True)}
        return [t for t in self.figure.data if t.name in sites and t.customdata is not None]

    def _trace_nodes(self, trace) -> list[tuple]:
        """The graph node of every marker of a node trace, in marker order."""
        return [
            (trace.name, round(float(x)), int(f))
            for x, f in zip(trace.x, trace.customdata, strict=True)
        ]

    def _highlight(self, node) -> None:
        with self.figure.batch_update():
            for trace in self._node_traces():
                nodes = self._trace_nodes(trace)
                trace.selectedpoints = [nodes.index(node)] if node in nodes else []
                trace.unselected = {"marker": {"opacity": UNSELECTED_OPACITY}}

    def _show_texts(self, unsteered: str | None, steered: str | None) -> None:
        prompt = self.prompt.value
        self.unsteered_html.value = flow_html.generated_html("unsteered", prompt, unsteered)
        self.steered_html.value = flow_html.generated_html("steered", prompt, steered)

    def _on_node(self, _change) -> None:
        self.refresh()

    def _on_click(self, trace, points, _state) -> None:
        if points.point_inds:
            self.select(self._trace_nodes(trace)[points.point_inds[0]])

    def _on_run(self, _button=None) -> None:
        self._busy(self.generate)

    def _busy(self, action) -> None:
        """Run `action` with the button disabled; a ValueError shows in `status`."""
        self.run.disabled = True
        self.status.value = views.note_html("generating…")
        try:
            action()
            self.status.value = ""
        except ValueError as err:  # e.g. no SAE for a node, a zero decoder row
            self.status.value = views.note_html(str(err), error=True)
        finally:
            self.run.disabled = False
