"""One notebook open in JupyterLab in headless Chromium: run it, check what the page shows, and
act on the dashboards' controls (found by the classes and data-testids of the UI contract)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from playwright.sync_api import expect

VIEWPORT = {"width": 1400, "height": 1000}
WIDGET_RENDER_MS = 60_000  # after the last cell: widget views still being created
LOADING = "Loading widget..."  # what jupyterlab-manager shows until a view is created

# Optional chaining: the shell's current widget is the launcher until the notebook opens.
NOTEBOOK_JS = "window.jupyterapp?.shell.currentWidget"
KERNEL_STATUS_JS = f"{NOTEBOOK_JS}?.sessionContext?.session?.kernel?.status"


class LabPage:
    """``path`` (relative to the server root) opened in its own browser context; every console
    error and uncaught page error is kept in ``console_errors``."""

    def __init__(self, browser, lab, path: str, viewport: dict | None = None):
        self.lab, self.path = lab, path
        self.context = browser.new_context(viewport=viewport or VIEWPORT)
        self.page = self.context.new_page()
        self.console_errors: list[str] = []
        self.page.on(
            "console",
            lambda m: m.type == "error" and self.console_errors.append(f"console: {m.text}"),
        )
        self.page.on("pageerror", lambda e: self.console_errors.append(f"pageerror: {e}"))
        # a workspace of its own, reset: JupyterLab would otherwise reopen earlier notebooks
        workspace = "".join(c if c.isalnum() else "-" for c in path)
        self.page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/{path}?reset&token={lab.token}")
        self.page.wait_for_function(
            f"() => {NOTEBOOK_JS}?.context?.path === {path!r} && {KERNEL_STATUS_JS} === 'idle'",
            timeout=120_000,
        )

    def close(self) -> None:
        """Shut the notebook's kernel down (each holds its model) and close the page."""
        try:
            self.page.evaluate(f"async () => {{ await {NOTEBOOK_JS}?.sessionContext.shutdown(); }}")
        finally:
            self.context.close()

    # --- running ---------------------------------------------------------------------------
    def run_all(self, timeout_s: float) -> None:
        """Run every cell (the menu's "Run All Cells"), wait for the last one and the idle
        kernel, save the notebook and wait until no widget is still loading."""
        self.page.evaluate(
            """() => { window.__runAll = undefined;
              window.jupyterapp.commands.execute('notebook:run-all-cells').then(
                ok => { window.__runAll = {ok}; },
                err => { window.__runAll = {error: String(err)}; }); }"""
        )
        self.page.wait_for_function("() => window.__runAll !== undefined", timeout=timeout_s * 1e3)
        self.wait_idle()
        self.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        self.page.wait_for_function(f"() => !{NOTEBOOK_JS}.context.model.dirty", timeout=30_000)
        self.page.wait_for_function(
            "t => ![...document.querySelectorAll('.jp-OutputArea-output')]"
            ".some(n => n.textContent.trim() === t)",
            arg=LOADING,
            timeout=WIDGET_RENDER_MS,
        )

    def wait_idle(self, timeout_ms: float = 120_000) -> None:
        self.page.wait_for_function(f"() => {KERNEL_STATUS_JS} === 'idle'", timeout=timeout_ms)

    def saved_notebook(self):
        """The notebook as JupyterLab saved it (outputs included), read with nbformat."""
        return nbformat.read(Path(self.lab.root) / self.path, as_version=4)

    # --- what the page shows ---------------------------------------------------------------
    def problems(self) -> dict[str, list]:
        """Everything a user would see as broken: cells without an execution count, error
        outputs, widgets that failed or never rendered, and browser console errors."""
        cells = self.page.evaluate(
            f"""() => {NOTEBOOK_JS}.content.widgets
                .filter(c => c.model.type === 'code')
                .map(c => ({{count: c.model.executionCount,
                  errors: c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                    .map(o => o.ename + ': ' + o.evalue)}}))"""
        )
        outputs = self.page.locator(".jp-OutputArea-output")
        texts = [outputs.nth(i).text_content() or "" for i in range(outputs.count())]
        return {
            "cells not run": [i for i, c in enumerate(cells) if c["count"] is None],
            "error outputs": [e for c in cells for e in c["errors"]],
            "widget errors": [t[:200] for t in texts if "Error displaying widget" in t],
            "widgets loading": [t for t in texts if t.strip() == LOADING],
            "console errors": list(self.console_errors),
        }

    def assert_no_problems(self) -> None:
        found = {what: items for what, items in self.problems().items() if items}
        assert not found, f"{self.path}: {found}"

    def screenshot(self, path: Path, selector: str | None = None, index: int = 0) -> None:
        """The whole window, or the `index`-th element `selector` scrolled to the top of the
        notebook and cut to the part of it the notebook shows (a long dashboard: its top)."""
        if selector is None:
            self.page.screenshot(path=str(path))
            return
        clip = (
            self.page.locator(selector)
            .nth(index)
            .evaluate(
                """el => { el.scrollIntoView({block: 'start'});
              const box = el.getBoundingClientRect();
              const view = el.closest('.jp-Notebook').getBoundingClientRect();
              const top = Math.max(box.top, view.top);
              return {x: box.left, y: top, width: box.width,
                      height: Math.min(box.bottom, view.bottom) - top}; }"""
            )
        )
        self.page.screenshot(path=str(path), clip=clip)

    # --- acting on the dashboards ----------------------------------------------------------
    def control(self, css_class: str, inner: str):
        """The `inner` element (input, select, textarea, button) of the widget with
        `css_class` (the UI contract's classes; ipywidgets may put the class on the element
        itself, a button for instance)."""
        return self.page.locator(f".{css_class} {inner}, {inner}.{css_class}").first

    def testid(self, name: str):
        return self.page.locator(f"[data-testid={name!r}]").first

    def type_and_enter(self, css_class: str, text: str, inner: str = "input") -> None:
        field = self.control(css_class, inner)
        field.fill(text)
        field.press("Enter")
        self.wait_idle()

    def select(self, css_class: str, label: str) -> None:
        self.control(css_class, "select").select_option(label=label)
        self.wait_idle()

    def click(self, css_class: str) -> None:
        button = self.control(css_class, "button")
        expect(button).to_be_enabled()
        button.click()
        self.wait_idle()
