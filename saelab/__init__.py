"""saelab: sparse autoencoders for interpreting language models, Jupyter first.

`import saelab` stays light: `evaluate` and the experiments (which use pandas and
plotly) load when first touched, e.g. `saelab.compare_domains`.
"""

from saelab.activations import ActivationStore, harvest
from saelab.data import load_corpus, load_prompts, pack
from saelab.models import hookpoint_names, load_model
from saelab.sae import SAE_KINDS, ResidualSAE, SAEFileError, load_sae, make_sae
from saelab.train import train_residual, train_sae
from saelab.version import __version__

_LAZY = {"compare_domains": "saelab.experiments.domains", "evaluate": "saelab.metrics"}

__all__ = [
    "SAE_KINDS",
    "ActivationStore",
    "ResidualSAE",
    "SAEFileError",
    "__version__",
    "compare_domains",
    "evaluate",
    "harvest",
    "hookpoint_names",
    "load_corpus",
    "load_model",
    "load_prompts",
    "load_sae",
    "make_sae",
    "pack",
    "train_residual",
    "train_sae",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saelab' has no attribute {name!r}")
