"""The papers' comparisons: domain vs broad SAEs, residual SAEs, HierarchicalTopK, KronSAE.

Each returns a tidy pandas table (one row per SAE and evaluation set); `summarize`
averages a table over seeds. Their figures live in `saelab.figures`.
"""

from saelab.experiments.common import save_outputs, summarize, timed_train, training_store
from saelab.experiments.domains import DOMAIN_GROUP, compare_domains, group_name
from saelab.experiments.residual import compare_residual
from saelab.experiments.sparsity import compare_hierarchical, compare_kron

__all__ = [
    "DOMAIN_GROUP",
    "compare_domains",
    "compare_hierarchical",
    "compare_kron",
    "compare_residual",
    "group_name",
    "save_outputs",
    "summarize",
    "timed_train",
    "training_store",
]
