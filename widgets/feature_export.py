"""One self-contained HTML file of many latents' dashboards, openable without a kernel.

Like sae_vis's saved dashboards: every latent's panels (title, activation histogram, top
contexts, quantile samples, logits with their histogram, nearest features) rendered by the
explorer's own pure functions, one `<section>` per latent, with a latent picker, previous /
next buttons and clickable neighbour ids in a few lines of plain JS. Figures are inline
SVG, so the file loads nothing from the network (no CDN, no plotly.js) and is small enough
to attach to a paper's supplement. Written atomically (`saelab.io.write_text`).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from saelab.features import FeatureIndex, LatentView
from saelab.io import write_text

from . import feature_html as views
from . import feature_panels as panels

PAGE_STYLE = """<style>
body { font-family: sans-serif; margin: 12px 20px; }
.fe-page-head { padding: 6px 0; border-bottom: 1px solid #ddd; }
.fe-latent[hidden] { display: none; }
</style>"""

#: Shows one latent's section: the picker, the buttons, `#latent-<id>` in the address and
#: clicks on any `data-latent` element (a neighbour, when it was exported) all go through it.
PAGE_JS = """<script>
(function () {
  var pick = document.getElementById('fe-pick');
  var note = document.getElementById('fe-page-note');
  function show(id) {
    var target = document.getElementById('latent-' + id);
    if (!target) { note.textContent = 'latent #' + id + ' is not in this file'; return; }
    note.textContent = '';
    document.querySelectorAll('section.fe-latent').forEach(function (s) {
      s.hidden = s !== target;
    });
    pick.value = String(id);
    history.replaceState(null, '', '#latent-' + id);
  }
  function step(delta) {
    var i = pick.selectedIndex + delta, n = pick.options.length;
    show(pick.options[((i % n) + n) % n].value);
  }
  pick.addEventListener('change', function () { show(pick.value); });
  document.getElementById('fe-page-prev').addEventListener('click', function () { step(-1); });
  document.getElementById('fe-page-next').addEventListener('click', function () { step(1); });
  document.addEventListener('click', function (e) {
    var link = e.target.closest('[data-latent]');
    if (link) { show(link.getAttribute('data-latent')); }
  });
  var start = location.hash.match(/^#latent-(\\d+)$/);
  show(start ? start[1] : pick.options[0].value);
})();
</script>"""


def latent_section_html(index: FeatureIndex, view: LatentView, label: str) -> str:
    """One latent's dashboard: header, then contexts and quantile samples beside the
    histogram, logits and nearest features."""
    stats, latent = index.stats, view.latent
    reference = float(stats.max_act_F[latent])
    main = views.contexts_html(view.contexts, reference) + views.quantiles_html(
        view.quantiles, reference
    )
    side = (
        panels.activation_histogram_html(
            view.histogram,
            float(stats.density_F[latent]),
            int(stats.count_F[latent]),
            stats.n_tokens,
        )
        + panels.logit_panel_html(view.effects, view.logit_histogram)
        + panels.neighbours_html(view.neighbours)
    )
    return (
        f"<section class='fe-latent' id='latent-{latent}' data-latent-section='{latent}'>"
        + views.header_html(stats, latent, label, index.n_latents)
        + f"<div class='fe-grid'><div class='fe-main'>{main}</div>"
        + f"<div class='fe-side'>{side}</div></div></section>"
    )


def export_feature_dashboard(
    sae,
    model,
    store,
    latents: Sequence[int],
    path: str | Path,
    *,
    k: int | None = None,
    top_k: int = 10,
    window: int = 8,
    neighbour_saes: Mapping[str, object] | None = None,
    labels: Callable[[int], str] | None = None,
    title: str | None = None,
    progress: bool = True,
) -> Path:
    """Write the dashboards of `latents` of `sae` over `store` to one offline HTML file.

    Options as in `FeatureExplorer` (`k` serves a TopK-family SAE at that sparsity,
    `neighbour_saes` adds other SAEs, e.g. other layers, to the nearest-feature search,
    `labels` names latents; default `sae.latent_label`). Returns `path`.
    """
    width = int(sae.cfg.width)
    chosen = list(dict.fromkeys(int(f) for f in latents))
    if not chosen:
        raise ValueError("no latents to export: pass at least one latent id")
    bad = [f for f in chosen if not 0 <= f < width]
    if bad:
        raise ValueError(f"latents {bad} out of range: this SAE has latents 0 .. {width - 1}")
    index = FeatureIndex(
        sae if k is None else sae.at_k(k),
        model,
        store,
        top_k=top_k,
        window=window,
        neighbour_saes={"this SAE": sae, **(neighbour_saes or {})},
        progress=progress,
        decoder=sae,
    )
    label = labels or sae.latent_label
    sections = [latent_section_html(index, index.view(f), str(label(f))) for f in chosen]
    options = "".join(
        f"<option value='{f}'>#{f} {html.escape(str(label(f)))}</option>" for f in chosen
    )
    where = f"{sae.cfg.model or 'model'} {sae.cfg.hookpoint or store.info.hookpoint}"
    heading = html.escape(title or f"SAE features: {where}")
    head = (
        f"<div class='fe-page-head'><b>{heading}</b> · {len(chosen)} latents of {width} · "
        f"{index.stats.n_tokens} store tokens · <label>latent <select id='fe-pick'>{options}"
        "</select></label> <button id='fe-page-prev'>◀ previous</button> "
        "<button id='fe-page-next'>next ▶</button> <span id='fe-page-note' class='fe-error'>"
        "</span></div>"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{heading}</title>"
        f"{views.STYLE}{PAGE_STYLE}</head><body>{head}{''.join(sections)}{PAGE_JS}</body></html>"
    )
    return write_text(path, page)
