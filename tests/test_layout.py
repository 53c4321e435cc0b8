"""The house rules the layout promises, checked: a light `import saelab`, one module that
opens nnsight traces, no Jupyter in the core."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_import_saelab_loads_neither_pandas_nor_plotly():
    code = (
        "import sys, saelab\n"
        "heavy = ('pandas', 'plotly', 'ipywidgets', 'nnsight')\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)))\n"
        "saelab.evaluate, saelab.compare_domains  # the lazy names resolve\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, pandas_after = out.stdout.split("\n")[:2]
    assert heavy == ""
    assert pandas_after == "True"  # and they load once an experiment is touched


def test_only_interventions_opens_traces_and_the_core_has_no_jupyter():
    core = [p for p in (ROOT / "saelab").rglob("*.py")]
    tracing = [
        p.relative_to(ROOT).as_posix()
        for p in [*core, *(ROOT / "widgets").rglob("*.py")]
        if ".trace(" in p.read_text() or ".generate(" in p.read_text()
    ]
    assert tracing == ["saelab/interventions.py"]
    jupyter = [p.name for p in core if "ipywidgets" in p.read_text() or "IPython" in p.read_text()]
    assert jupyter == []
