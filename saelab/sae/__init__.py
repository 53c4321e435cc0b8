"""SAE kinds behind one interface (`base.SAE`) and a registry by name (`registry`)."""

from saelab.sae import batchtopk, hierarchical, jumprelu, kron, relu, residual, topk  # noqa: F401  (registers)
from saelab.sae.base import SAE, LossOutput, SAEConfig, SAEOutput, TrainContext, check_fits, fires
from saelab.sae.folder import SAEFileError
from saelab.sae.registry import SAE_KINDS, load_sae, make_sae, register, sae_class
from saelab.sae.residual import ResidualSAE

__all__ = [
    "SAEFileError",
    "SAE",
    "SAE_KINDS",
    "LossOutput",
    "ResidualSAE",
    "SAEConfig",
    "SAEOutput",
    "TrainContext",
    "check_fits",
    "fires",
    "load_sae",
    "make_sae",
    "register",
    "sae_class",
]
