"""Cross-layer feature flow (Laptev et al., arXiv 2502.03032): how the features of one
layer's residual stream come from the previous layer, its MLP and its attention.

docs/methods.md, "Cross-layer feature flow", steps 1-5, one module each:
`match` (data-free decoder matching), `groups` (per-token predecessor groups, the
shuffled-decoder null and the exact three-part split), `separation` (Mann-Whitney U of
the matching scores between groups), `graph` (flow graphs from a seed feature, with
label material) and, step 5, `deactivation` (remove a predecessor on one token, rerun the
forward, measure the target) with the baselines' `pickers`; `train` makes the SAEs (one
per hookpoint of a span of blocks, from one aligned harvest). Not imported by
`import saelab` (it needs networkx and scipy): `from saelab import flow`.
"""

from saelab.flow.deactivation import deactivation, deactivation_sweep, summarize_deactivation
from saelab.flow.graph import attach_labels, flow_graph, flow_layers
from saelab.flow.groups import GROUPS, PredecessorGroups, predecessor_groups
from saelab.flow.match import FlowHookpoints, FlowMatch, flow_hookpoints, match
from saelab.flow.pickers import METHODS
from saelab.flow.separation import Separation, group_separation, mann_whitney
from saelab.flow.train import layer_hookpoints, load_layer_saes, save_layer_saes, train_layer_saes

__all__ = [
    "GROUPS",
    "METHODS",
    "FlowHookpoints",
    "FlowMatch",
    "PredecessorGroups",
    "Separation",
    "attach_labels",
    "deactivation",
    "deactivation_sweep",
    "flow_graph",
    "flow_hookpoints",
    "flow_layers",
    "group_separation",
    "layer_hookpoints",
    "load_layer_saes",
    "mann_whitney",
    "match",
    "predecessor_groups",
    "save_layer_saes",
    "summarize_deactivation",
    "train_layer_saes",
]
