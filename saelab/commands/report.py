"""`saelab report <table.csv | metrics.json | folder> --out report.html`: the self-contained
HTML report (`saelab.figures.write_report`, plotly.js inlined) of saved experiment tables.

A table's figures are chosen by its columns (`saelab.figures.tables`); a folder reports
`metrics.json` and every CSV it recognises (a quickstart folder, an experiment's `out/`, a
`saelab flow` output) and names the CSVs it skipped. An unrecognised table given by name is
a one-line error listing the columns each known table has. `--figures DIR` also saves each
figure for a paper (`saelab.figures.save`: PDF, PNG or SVG in the system Chromium).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from saelab.commands.common import fail

#: Folder files first in this order (the quickstart's, an experiment's, flow's), then the rest.
FOLDER_ORDER = ("metrics.json", "history.csv", "table.csv", "groups.csv", "deactivation.csv")

REPORT_EXAMPLE = """examples:
  saelab report runs/hierarchical                 # a saelab compare folder: table.csv
  saelab report runs/flow/groups.csv --out groups.html --figures figs --format svg"""


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "report",
        help="an offline HTML report of saved experiment tables (CSV, metrics.json or a folder)",
        description=__doc__.split("\n\n")[0],
        epilog=REPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="a table (.csv), a metrics.json or a folder")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report file (default: saelab-report.html beside the table, or in the folder)",
    )
    parser.add_argument("--title", default=None, help="page title (default: the source's name)")
    parser.add_argument(
        "--figures", type=Path, default=None, help="also save each figure to this folder"
    )
    parser.add_argument(
        "--format", choices=("pdf", "png", "svg"), default="pdf", help="of --figures (pdf)"
    )
    parser.set_defaults(run=run)


def source_files(source: Path) -> list[Path]:
    """`source` itself, or a folder's `FOLDER_ORDER` files and then its other CSVs."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        fail("report", f"{source} does not exist")
    ordered = [source / name for name in FOLDER_ORDER if (source / name).is_file()]
    others = sorted(p for p in source.glob("*.csv") if p.name not in FOLDER_ORDER)
    return ordered + others


def file_figures(path: Path) -> tuple[str, list]:
    """(what the file holds, its figures); ValueError for a file no figure fits."""
    import pandas as pd

    from saelab import figures
    from saelab.figures import tables

    if path.suffix == ".json":
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict) or any(
            isinstance(v, dict | list) for v in metrics.values()
        ):
            raise ValueError(
                "expected a flat JSON object of metrics (the quickstart's metrics.json)"
            )
        return "metrics", [figures.metrics_table(metrics)]
    if path.suffix != ".csv":
        raise ValueError(
            f"expected a .csv table or a metrics .json, not {path.suffix or 'no suffix'!r}"
        )
    table = pd.read_csv(path)
    return tables.recognise(table), tables.table_figures(table)


def build_report(source: Path, out: Path, title: str | None = None):
    """Write the report of `source` to `out`: its path, its figures and one line per file
    (used or skipped)."""
    from saelab import figures

    source = Path(source)
    files = source_files(source)
    report, lines = [], []
    for path in files:
        try:
            what, figs = file_figures(path)
        except ValueError as err:
            if source.is_file():
                fail("report", f"{path}: {err}")
            lines.append(f"skipped {path.name}: {str(err).split(';')[0]}")
            continue
        report += figs
        lines.append(f"{path.name}: {what} ({len(figs)} figure{'s' * (len(figs) != 1)})")
    if not report:
        found = "; ".join(lines) or "no CSV or metrics.json"
        fail("report", f"no table saelab can draw in {source} ({found})")
    notes = f"Drawn from {source}: " + "; ".join(lines) + "."
    title = title or f"saelab report: {source.name}"
    return figures.write_report(out, title, report, notes), report, lines


def save_figures(report: list, folder: Path, fmt: str) -> list[Path]:
    """Each figure as `folder/NN-<title>.<fmt>` (`saelab.figures.save`)."""
    from saelab import figures

    paths = []
    for i, fig in enumerate(report, start=1):
        slug = re.sub(r"[^a-z0-9]+", "-", (fig.layout.title.text or "figure").lower()).strip("-")
        paths.append(figures.save(fig, Path(folder) / f"{i:02d}-{slug[:60]}.{fmt}"))
    return paths


def run(args: argparse.Namespace) -> int:
    source = Path(args.source)
    out = args.out or (source if source.is_dir() else source.parent) / "saelab-report.html"
    path, report, lines = build_report(source, out, args.title)
    for line in lines:
        print(f"[saelab] {line}")
    if args.figures is not None:
        from saelab.figures import BrowserNotFoundError

        try:
            for saved in save_figures(report, args.figures, args.format):
                print(f"[saelab] figure: {saved}")
        except BrowserNotFoundError as err:
            fail("report", str(err))
    print(f"[saelab] report: {path}")
    return 0
