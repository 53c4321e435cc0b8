"""A real JupyterLab server and Debian's Chromium (driven by Playwright) for the browser tests.

The server runs on 127.0.0.1 at a free port with a random token and its own HOME and JUPYTER_*
folders, serving a temp copy of notebooks/ (so notebook outputs and `runs/` land there). Its
kernels get the CI-size switch of the notebooks (`SAELAB_NOTEBOOK_SMALL=1`) and the caller's
saelab cache and shared fixtures (HOME changes, so defaults under ~ would be lost).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from saelab.paths import REPO_ROOT, cache_dir, shared_dir

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
    "--disable-background-networking",  # offline machines: no update or safe-browsing pings
]
SERVER_START_S = 120
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"

#: JupyterLab user settings: render every cell (the default windowing leaves off-screen cells
#: out of the DOM, where a broken widget would go unseen), start the default kernel without a
#: dialog, and fetch no news (offline).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "windowingMode": "none",
        "autoStartDefaultKernel": True,
    },
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "checkForUpdates": False,
        "fetchNews": "false",
    },
}


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.browser)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_env(tmp: Path) -> dict[str, str]:
    """The server's (and so its kernels') environment: private HOME and JUPYTER_* folders."""
    env = dict(os.environ)
    env.update(
        SAELAB_CACHE=str(cache_dir()),
        SAELAB_SHARED=str(shared_dir()),
        HF_HOME=os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface")),
        HOME=str(tmp / "home"),
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_DATA_DIR=str(tmp / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        SAELAB_NOTEBOOK_SMALL="1",  # the notebooks' CI size
        TQDM_DISABLE="1",
    )
    for key in ("HOME", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    settings = Path(env["JUPYTER_CONFIG_DIR"]) / "lab" / "user-settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return env


def wait_for_status(url: str, token: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"jupyter lab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            request = urllib.request.Request(
                f"{url}/api/status", headers={"Authorization": f"token {token}"}
            )
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer in {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """A running JupyterLab: ``.url``, ``.token`` and ``.root`` (the folder it serves, holding
    a copy of notebooks/)."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "root"
    shutil.copytree(REPO_ROOT / "notebooks", root, ignore=shutil.ignore_patterns("runs"))
    port, token = free_port(), secrets.token_hex(16)
    log = tmp / "jupyter.log"
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
        "--expose-app-in-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, env=lab_env(tmp), cwd=root, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_status(url, token, server, log)
        yield type("Lab", (), {"url": url, "token": token, "root": root, "log": log})
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium (never Playwright's own download: it needs a CDN)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium "
            "(`apt-get install -y chromium`; .ci/run does this)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
