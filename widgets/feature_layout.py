"""The FeatureExplorer's controls and layout: which widget goes where, its CSS class from
the UI contract (notes/UI_CONTRACT.md, found by the browser tests) and its event.

Two columns that wrap: contexts and quantile samples on the left, histogram, logits and
nearest features on the right, each `flex` with `min-width: 0`, so the SVG figures take
their column's width whatever the notebook's width.
"""

from __future__ import annotations

import ipywidgets as widgets

from . import feature_html as views


def _classed(widget, css_class: str):
    widget.add_class(css_class)
    return widget


def build_layout(ex, start: int, prompt: str) -> list:
    """Create `ex`'s controls and views as its attributes; return its children, laid out."""
    ex.latent = _classed(
        widgets.IntText(value=start, description="latent", layout={"width": "170px"}),
        "saelab-fe-latent",
    )
    ex.prev = _classed(
        widgets.Button(icon="arrow-left", tooltip="previous latent"), "saelab-fe-prev"
    )
    ex.next = _classed(widgets.Button(icon="arrow-right", tooltip="next latent"), "saelab-fe-next")
    ex.random = _classed(
        widgets.Button(description="random", icon="random", tooltip="a random alive latent"),
        "saelab-fe-random",
    )
    for button in (ex.prev, ex.next):
        button.layout.width = "40px"
    ex.search = _classed(
        widgets.Text(
            placeholder="token text…",
            description="search",
            continuous_update=False,
            layout={"width": "240px"},
        ),
        "saelab-fe-search",
    )
    ex.matches = _classed(
        widgets.Dropdown(
            options=[("— search top tokens —", None)],
            value=None,
            description="matches",
            layout={"width": "340px"},
        ),
        "saelab-fe-matches",
    )
    ex.most_medical = widgets.Button(
        description="most medical",
        icon="stethoscope",
        tooltip="alive latent with the largest share of medical top tokens",
    )
    ex.status = widgets.HTML()
    ex.header_html = widgets.HTML()
    ex.contexts_html = widgets.HTML()
    ex.quantiles_html = widgets.HTML()
    ex.histogram = widgets.HTML()
    ex.logits_html = widgets.HTML()
    ex.neighbours_html = widgets.HTML()
    ex.prompt = _classed(
        widgets.Textarea(
            value=prompt, description="prompt", layout={"width": "70%", "height": "60px"}
        ),
        "saelab-fe-prompt",
    )
    ex.run_prompt = _classed(
        widgets.Button(description="show latents", icon="play"), "saelab-fe-run-prompt"
    )
    ex.prompt_position = _classed(
        widgets.Dropdown(options=[], description="rank on", layout={"width": "260px"}),
        "saelab-fe-prompt-token",
    )
    ex.prompt_html = widgets.HTML()
    ex.prompt_rank_html = widgets.HTML()

    controls = widgets.HBox(
        [ex.latent, ex.prev, ex.next, ex.random, ex.search, ex.matches, ex.most_medical],
        layout={"flex_flow": "row wrap"},
    )
    main = widgets.VBox(
        [ex.contexts_html, ex.quantiles_html], layout={"flex": "3 1 420px", "min_width": "0"}
    )
    side = widgets.VBox(
        [ex.histogram, ex.logits_html, ex.neighbours_html],
        layout={"flex": "2 1 280px", "min_width": "0"},
    )
    return [
        widgets.HTML(views.STYLE),
        controls,
        ex.status,
        ex.header_html,
        widgets.HBox([main, side], layout={"flex_flow": "row wrap", "width": "100%"}),
        widgets.HTML("<h4>Latents on a prompt</h4>"),
        widgets.HBox([ex.prompt, ex.run_prompt]),
        ex.prompt_html,
        ex.prompt_position,
        ex.prompt_rank_html,
    ]


def wire_events(ex) -> None:
    """Connect `ex`'s controls to its handlers (after `build_layout`)."""
    ex.add_class("saelab-fe")  # the scope of the rank view's clickable latent ids
    ex.latent.observe(ex._on_latent, names="value")
    ex.prev.on_click(lambda _: ex._step(-1))
    ex.next.on_click(lambda _: ex._step(+1))
    ex.random.on_click(ex._on_random)
    ex.search.observe(ex._on_search, names="value")
    ex.matches.observe(ex._on_match, names="value")
    ex.most_medical.on_click(ex._on_most_medical)
    ex.run_prompt.on_click(ex._on_run_prompt)
    ex.prompt_position.observe(lambda _: ex._draw_prompt(), names="value")
