"""saelab: sparse autoencoders for interpreting language models, Jupyter first."""

__version__ = "0.1.0"

from saelab.activations import ActivationStore, harvest  # noqa: E402
from saelab.data import load_corpus, pack  # noqa: E402
from saelab.models import hookpoint_names, load_model  # noqa: E402
from saelab.sae import SAE_KINDS, load_sae, make_sae  # noqa: E402
from saelab.train import train_sae  # noqa: E402

__all__ = ["ActivationStore", "harvest", "load_corpus", "pack", "load_model", "hookpoint_names",
           "SAE_KINDS", "load_sae", "make_sae", "train_sae"]
