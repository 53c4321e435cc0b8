"""Save a plotly figure for a paper: PDF, PNG or SVG through kaleido, or self-contained HTML.

Static formats are rendered by kaleido (>= 1) in the system Chromium, fully offline: the
plotly.js that plotly ships is loaded from disk and MathJax is off (kaleido's default
fetches it from a CDN, which hangs or fails on machines without a network). The browser is
`BROWSER_PATH` when set, else the first of `BROWSER_NAMES` on PATH; with none, the error
says how to install one. Every file is written atomically (`saelab.io.atomic_file`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import plotly
from plotly.basedatatypes import BaseFigure

from saelab.io import atomic_file, write_text

#: Suffixes `save` writes; the static ones go through kaleido.
STATIC_FORMATS = {".pdf": "pdf", ".png": "png", ".svg": "svg"}
FORMATS = (*STATIC_FORMATS, ".html")
#: Executables tried on PATH when BROWSER_PATH is not set (Debian's package is `chromium`).
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: plotly's default figure size in pixels, used when the figure's layout sets none.
DEFAULT_WIDTH, DEFAULT_HEIGHT = 700, 500


class BrowserNotFoundError(RuntimeError):
    """No Chromium to render static figures with."""


def find_browser() -> str:
    """Path of the Chromium kaleido will drive: `BROWSER_PATH`, else one of `BROWSER_NAMES`."""
    hint = "install one with `apt-get install -y chromium` or set BROWSER_PATH to its path"
    if explicit := os.environ.get("BROWSER_PATH"):
        if Path(explicit).is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise BrowserNotFoundError(
            f"no browser at BROWSER_PATH={explicit!r}; static figure export (kaleido) needs "
            f"Chromium: {hint}"
        )
    for name in BROWSER_NAMES:
        if found := shutil.which(name):
            return found
    raise BrowserNotFoundError(
        f"no Chromium found (looked for {', '.join(BROWSER_NAMES)} on PATH); static figure "
        f"export (kaleido) needs one: {hint}"
    )


def _size(fig: BaseFigure, width: int | None, height: int | None) -> tuple[int, int]:
    """The requested size, else the figure's own layout size, else plotly's default."""
    width = width or fig.layout.width or DEFAULT_WIDTH
    height = height or fig.layout.height or DEFAULT_HEIGHT
    return int(width), int(height)


def to_image(
    fig: BaseFigure, fmt: str, width: int | None = None, height: int | None = None, scale=1
) -> bytes:
    """`fig` rendered as `fmt` ("pdf", "png" or "svg") bytes, offline, in the system Chromium.

    A PNG is `width * scale` x `height * scale` pixels; PDF and SVG are `width` x `height`
    points."""
    import kaleido

    width, height = _size(fig, width, height)
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    options = {"format": fmt, "width": width, "height": height, "scale": scale}
    kaleido_options = {"path": find_browser(), "mathjax": False, "plotlyjs": plotly_js}
    return kaleido.calc_fig_sync(fig.to_dict(), opts=options, kopts=kaleido_options)


def save(
    fig: BaseFigure,
    path: str | Path,
    width: int | None = None,
    height: int | None = None,
    scale: float = 1,
) -> Path:
    """Write `fig` to `path`; the suffix picks the format (.pdf, .png, .svg or .html).

    `width` and `height` (pixels; default the figure's layout size, else 700 x 500) and
    `scale` (PNG resolution multiplier) apply to the static formats. `.html` is one
    self-contained page with plotly.js inlined, so it opens offline."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"cannot save a figure as {path.name!r}: unknown suffix {path.suffix!r}; "
            f"use one of {', '.join(FORMATS)}"
        )
    if not isinstance(fig, BaseFigure):
        raise TypeError(f"expected a plotly Figure or FigureWidget, got {type(fig).__name__}")
    if suffix == ".html":
        page = fig.to_html(full_html=True, include_plotlyjs=True, include_mathjax=False)
        return write_text(path, page)
    data = to_image(fig, STATIC_FORMATS[suffix], width, height, scale)
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return path
