"""`saelab.figures.save`: PNG size from its IHDR, SVG and PDF content, offline HTML, errors.

The static formats need a Chromium (Debian's `chromium`); without one those tests skip and
the missing-browser error is still checked."""

import re
import shutil
import struct
import xml.etree.ElementTree as ET

import plotly.graph_objects as go
import plotly.offline
import pytest

from saelab.figures import BrowserNotFoundError, save
from saelab.figures.export import find_browser

HAS_BROWSER = any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))
needs_browser = pytest.mark.skipif(not HAS_BROWSER, reason="no Chromium (apt-get install chromium)")


def figure() -> go.Figure:
    return go.Figure(
        go.Bar(x=["alpha", "beta"], y=[3, 5], name="bars", text=["three-ish", "five-ish"]),
        layout={"title": {"text": "Export check $x^2$"}},
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which follows the 8-byte signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@needs_browser
def test_png_has_requested_pixel_size(tmp_path):
    path = save(figure(), tmp_path / "fig.png", width=321, height=234)
    assert png_size(path.read_bytes()) == (321, 234)
    scaled = save(figure(), tmp_path / "fig2.png", width=300, height=200, scale=2)
    assert png_size(scaled.read_bytes()) == (600, 400)


@needs_browser
def test_png_defaults_to_layout_size(tmp_path):
    fig = figure().update_layout(width=410, height=290)
    assert png_size(save(fig, tmp_path / "fig.PNG").read_bytes()) == (410, 290)


@needs_browser
def test_svg_parses_and_holds_trace_text(tmp_path):
    path = save(figure(), tmp_path / "fig.svg", width=500, height=300)
    root = ET.fromstring(path.read_text())
    assert root.tag.endswith("svg")
    assert root.get("width") == "500" and root.get("height") == "300"
    texts = {"".join(el.itertext()) for el in root.iter() if el.tag.endswith("text")}
    assert {"alpha", "beta", "three-ish", "five-ish"} <= texts


@needs_browser
def test_pdf_starts_with_header_and_leaves_no_temporary(tmp_path):
    path = save(figure(), tmp_path / "sub" / "fig.pdf")
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-64:]
    assert [p.name for p in path.parent.iterdir()] == ["fig.pdf"]


def test_html_is_self_contained(tmp_path):
    page = save(figure(), tmp_path / "fig.html").read_text()
    assert plotly.offline.get_plotlyjs()[:200] in page
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing fetched when opened
    assert "three-ish" in page


def test_unknown_suffix_and_non_figure_raise(tmp_path):
    with pytest.raises(ValueError, match=r"unknown suffix '\.jpg'.*\.pdf, \.png, \.svg, \.html"):
        save(figure(), tmp_path / "fig.jpg")
    with pytest.raises(ValueError, match="unknown suffix ''"):
        save(figure(), tmp_path / "fig")
    with pytest.raises(TypeError, match="plotly Figure"):
        save({"data": []}, tmp_path / "fig.png")
    assert list(tmp_path.iterdir()) == []


def test_missing_browser_is_named(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-chromium"
    monkeypatch.setenv("BROWSER_PATH", str(missing))
    with pytest.raises(BrowserNotFoundError, match=f"BROWSER_PATH='{missing}'.*apt-get install"):
        save(figure(), tmp_path / "fig.png")
    assert not (tmp_path / "fig.png").exists()
    monkeypatch.delenv("BROWSER_PATH")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrowserNotFoundError, match="no Chromium found.*chromium.*apt-get"):
        find_browser()
