"""saelab: sparse autoencoders for interpreting language models, Jupyter first."""

__version__ = "0.1.0"

from saelab.activations import ActivationStore, harvest
from saelab.compare import compare_domains
from saelab.data import load_corpus, load_prompts, pack
from saelab.metrics import evaluate
from saelab.models import hookpoint_names, load_model
from saelab.sae import SAE_KINDS, ResidualSAE, load_sae, make_sae
from saelab.train import train_residual, train_sae

__all__ = [
    "SAE_KINDS",
    "ActivationStore",
    "ResidualSAE",
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
