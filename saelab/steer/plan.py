"""Steering plans: which feature directions to push, by how much, and the edits that do it.

A plan is a list of `SteeringTerm`s (docs/methods.md, "Cross-layer feature flow", step 6).
Promotion ("add") adds `coefficient · direction` to a hookpoint's output on every token;
suppression ("scale") rescales one SAE feature's contribution, `h <- h + (r − 1)·a_f·W_dec,f`
with `a_f` the feature's code recomputed from `h` at every position (step 5's edit).

Units. Saved SAEs take activations in the model's units and their decoder rows have norm
`1/input_scale`, so a code `a` adds `a · W_dec,f = a · ||W_dec,f|| · d̂_f` to the
reconstruction. `promote(sae, f, s, typical)` stores the unit direction `d̂_f` and the
coefficient `s · typical[f] · ||W_dec,f||`: it adds exactly what the feature adds when its
code is `s` times its typical code, so one strength means the same for every feature and
every hookpoint whatever its scale.

Plans from a flow graph (`from_graph`), step 6; `l` is a node's layer:

- "single": the nodes of layer `layer` only, `s′ = s`;
- "cumulative": the nodes of layers `<= layer` (all nodes when `layer` is None), `s′ = s`;
- "exponential": the cumulative nodes, `s′ = s · e^{α l}` (α = −0.05: deeper nodes get less);
  `l` is the absolute layer index, as the paper writes it;
- "linear": the cumulative nodes, `s′` from `s` at the first selected layer to 1 at the last
  (`s` alone when the nodes span one layer).

A graph is any networkx graph whose nodes carry `site`, `layer`, `feature` and `hookpoint`
attributes (what `saelab.flow.flow_graph` builds); only the nodes are read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from saelab import interventions
from saelab.features.stats import as_store, encode_codes, feature_stats, sae_placement
from saelab.models import parse_hookpoint
from saelab.sae import fires

MODES = ("add", "scale")
SCHEDULES = ("single", "cumulative", "exponential", "linear")


class SteeringTerm(NamedTuple):
    """One edit of a plan, applied on every token (prompt and generated).

    mode "add": `h <- h + coefficient · direction_D` (promotion; `promote` stores a unit
    direction). mode "scale": the feature's contribution is rescaled by `r = coefficient`,
    `h <- h + (r − 1)·a_f·W_dec,f`, with `a_f = sae.encode(h)[feature]` (suppression; 1 leaves
    `h` unchanged, 0 removes the feature, −1 flips it); `sae` and `feature` are needed only
    for this mode. `direction_D` is the unit decoder direction in both modes.
    """

    hookpoint: str
    direction_D: torch.Tensor
    coefficient: float
    mode: str = "add"
    sae: torch.nn.Module | None = None
    feature: int | None = None


def unit_direction(sae, feature: int) -> tuple[torch.Tensor, float]:
    """(unit decoder direction `[D]` float32 on CPU, the row's norm) of one feature."""
    row_D = sae.W_dec_FD[int(feature)].detach().float().cpu()
    norm = float(row_D.norm())
    if norm == 0:
        raise ValueError(f"{sae.latent_label(feature)} has a zero decoder row: no direction")
    return row_D / norm, norm


def _hookpoint(sae, hookpoint: str | None) -> str:
    name = hookpoint or sae.cfg.hookpoint
    if not name:
        raise ValueError("the SAE records no hookpoint: pass hookpoint='resid_post.L' (or similar)")
    return str(name)


def promote(
    sae, feature: int, strength: float, typical: torch.Tensor | None = None, hookpoint=None
) -> SteeringTerm:
    """Add `strength · typical[feature]` times the feature's decoder row on every token.

    `typical` `[F]` is each feature's typical code (`typical_activation`); None means 1, so
    `strength` is then a code value. The term's coefficient is in activation units
    (`strength · typical · ||W_dec,f||`) along the unit direction (see the module doc).
    """
    unit_D, norm = unit_direction(sae, feature)
    scale = 1.0 if typical is None else float(typical[int(feature)])
    return SteeringTerm(
        _hookpoint(sae, hookpoint),
        unit_D,
        float(strength) * scale * norm,
        "add",
        None,
        int(feature),
    )


def suppress(sae, feature: int, r: float, hookpoint=None) -> SteeringTerm:
    """Rescale the feature's contribution by `r` on every token: `h <- h + (r − 1)·a_f·W_dec,f`,
    with `a_f` its code computed from `h` by `sae` (r = 1: no change; 0: removed up to SAE
    error; −1: flipped)."""
    unit_D, _ = unit_direction(sae, feature)
    return SteeringTerm(_hookpoint(sae, hookpoint), unit_D, float(r), "scale", sae, int(feature))


def random_control(
    sae, n_features: int, strength: float, typical: torch.Tensor | None = None, seed: int = 0
) -> list[SteeringTerm]:
    """The random-feature control: promote `n_features` features drawn uniformly without
    replacement (seeded) at `strength`, in the same units as a real plan. Match a graph plan
    by calling it once per hookpoint with that hookpoint's node count and joining the lists;
    in `sweep` pass `lambda s: random_control(sae, n, s, typical, seed)`."""
    g = torch.Generator().manual_seed(seed)
    picked = torch.randperm(sae.cfg.width, generator=g)[:n_features]
    return [promote(sae, int(f), strength, typical) for f in sorted(picked.tolist())]


def _suppression_fn(term: SteeringTerm):
    """`h -> h + (r − 1)·a_f·W_dec,f` on `[..., D]` rows, `a_f` re-encoded from `h`."""
    sae, feature, r = term.sae, int(term.feature), term.coefficient
    device, dtype = sae_placement(sae)

    def fn(h: torch.Tensor) -> torch.Tensor:
        # nnsight may run this beside the forward in another thread: grad mode is per thread
        with torch.no_grad():
            rows_ND = h.reshape(-1, h.shape[-1]).to(device, dtype)
            a_N = sae.encode(rows_ND)[:, feature]
            delta_ND = (r - 1) * a_N[:, None] * sae.W_dec_FD[feature]
            return h + delta_ND.reshape(h.shape).to(h)

    return fn


def plan_edits(model, plan: Sequence[SteeringTerm]) -> list[interventions.Edit]:
    """The `interventions.Edit`s of a plan, every position edited (`positions=None`).
    Several terms at one hookpoint apply one after another in plan order."""
    edits = []
    for term in plan:
        if term.mode == "add":
            edits.append(
                interventions.add_direction(
                    model, term.hookpoint, term.direction_D, term.coefficient
                )
            )
        elif term.mode == "scale":
            if term.sae is None or term.feature is None:
                raise ValueError("a 'scale' term needs its sae and feature (use steer.suppress)")
            hookpoint = parse_hookpoint(model, term.hookpoint)
            edits.append(interventions.Edit(hookpoint, _suppression_fn(term), None))
        else:
            raise ValueError(f"unknown steering mode {term.mode!r}; known: {MODES}")
    return edits


@torch.no_grad()
def typical_activation(
    sae, store, quantile: float | None = None, batch_size: int = 4096
) -> torch.Tensor:
    """Each feature's typical code `[F]` (float64) over the tokens where it fires: the mean
    (`feature_stats(...).mean_act_F`) when `quantile` is None, else that quantile of its
    non-zero codes (linear interpolation, as `torch.quantile`; e.g. 0.99). 0 for a feature
    that never fires, so promoting it does nothing. The quantile keeps every non-zero code
    (L0 × N values), never a dense `[N, F]`."""
    if quantile is None:
        return feature_stats(sae, store, top_k=1, batch_size=batch_size).mean_act_F
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    store = as_store(store)
    features, values = [], []
    for start in range(0, len(store), batch_size):
        x_BD = store.get(torch.arange(start, min(start + batch_size, len(store))))
        f_BF = encode_codes(sae, x_BD)
        _, feat_M = fires(f_BF).nonzero(as_tuple=True)
        features.append(feat_M)
        values.append(f_BF[fires(f_BF)])
    width = sae.cfg.width
    feat_M = torch.cat(features) if features else torch.zeros(0, dtype=torch.long)
    vals_M = torch.cat(values).double() if values else torch.zeros(0, dtype=torch.float64)
    # sort by value, then stably by feature: each feature's codes are one ascending run
    vals_M, order = vals_M.sort()
    feat_M, order2 = feat_M[order].sort(stable=True)
    vals_M = vals_M[order2]
    count_F = torch.bincount(feat_M, minlength=width)
    start_F = count_F.cumsum(0) - count_F
    pos_F = quantile * (count_F - 1).clamp_min(0).double()
    lo_F, hi_F = pos_F.floor().long(), pos_F.ceil().long()
    safe = vals_M if len(vals_M) else torch.zeros(1, dtype=torch.float64)
    lo_v = safe[(start_F + lo_F).clamp_max(len(safe) - 1)]
    hi_v = safe[(start_F + hi_F).clamp_max(len(safe) - 1)]
    out_F = lo_v + (pos_F - lo_F.double()) * (hi_v - lo_v)
    return torch.where(count_F > 0, out_F, torch.zeros_like(out_F))


# --- plans from a flow graph ----------------------------------------------------------------


def layer_strengths(
    layers: list[int], strength: float, schedule: str, alpha: float = -0.05
) -> dict[int, float]:
    """`s′_l` for each layer of `layers` (the selected nodes' layers) under `schedule`."""
    if schedule in ("single", "cumulative"):
        return {layer: float(strength) for layer in layers}
    if schedule == "exponential":
        return {layer: float(strength) * math.exp(alpha * layer) for layer in layers}
    if schedule == "linear":
        first, last = min(layers), max(layers)
        if first == last:
            return {first: float(strength)}
        return {
            layer: strength + (1.0 - strength) * (layer - first) / (last - first)
            for layer in layers
        }
    raise ValueError(f"unknown schedule {schedule!r}; known: {SCHEDULES}")


def from_graph(
    graph,
    saes: dict,
    strength: float,
    schedule: str = "cumulative",
    layer: int | None = None,
    typical: dict[str, torch.Tensor] | None = None,
    alpha: float = -0.05,
) -> list[SteeringTerm]:
    """A promotion plan over the nodes of a flow graph (see the module doc for schedules).

    `saes` maps each node's hookpoint to its SAE; `typical` maps hookpoints to per-feature
    typical codes `[F]` (`typical_activation`; a missing hookpoint, or None, means 1). Terms
    come in (layer, hookpoint, feature) order.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {SCHEDULES}")
    if schedule == "single" and layer is None:
        raise ValueError("schedule='single' needs the layer to steer: pass layer=")
    nodes = [graph.nodes[node] for node in graph.nodes]
    if schedule == "single":
        chosen = [n for n in nodes if n["layer"] == layer]
    else:
        chosen = [n for n in nodes if layer is None or n["layer"] <= layer]
    if not chosen:
        have = sorted({n["layer"] for n in nodes})
        raise ValueError(f"no graph node for schedule {schedule!r} at layer {layer}; has {have}")
    missing = sorted({str(n["hookpoint"]) for n in chosen} - set(map(str, saes)))
    if missing:
        raise ValueError(f"no SAE given for hookpoints {missing}")
    chosen.sort(key=lambda n: (n["layer"], str(n["hookpoint"]), int(n["feature"])))
    s_l = layer_strengths([n["layer"] for n in chosen], strength, schedule, alpha)
    typical = typical or {}
    sae_of = {str(h): sae for h, sae in saes.items()}
    typical_of = {str(h): t for h, t in typical.items()}
    return [
        promote(
            sae_of[str(n["hookpoint"])],
            int(n["feature"]),
            s_l[n["layer"]],
            typical_of.get(str(n["hookpoint"])),
            hookpoint=str(n["hookpoint"]),
        )
        for n in chosen
    ]
