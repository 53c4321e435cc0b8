"""CE loss recovered, ΔCE and KL: the model's next-token loss with an SAE spliced in.

The maths is docs/methods.md, "Metrics" ("### CE loss recovered"). Every forward goes
through `saelab.interventions` (clean logits, and a `splice` of the kept positions for the
zero / mean ablations and each SAE); BOS and sinks pass through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from tqdm.auto import tqdm

from saelab import interventions
from saelab.models import Hookpoint, model_device, parse_hookpoint

CE_COLUMNS = [
    "ce_clean",
    "ce_sae",
    "ce_zero_ablate",
    "ce_mean_ablate",
    "ce_loss_recovered",
    "ce_loss_recovered_mean",
    "delta_ce",
    "kl",
]


def ce_loss_recovered(ce_clean: float, ce_ablate: float, ce_sae: float) -> float:
    """(CE_ablate − CE_sae) / (CE_ablate − CE_clean): 1 = as good as the model, 0 = as ablation."""
    denom = ce_ablate - ce_clean
    return (ce_ablate - ce_sae) / denom if denom != 0 else math.nan


def _next_token_logprobs(logits_BTV: torch.Tensor) -> torch.Tensor:
    """log-softmax (float32) of the predictions for positions 1..T−1, `[B, T−1, V]`."""
    return torch.log_softmax(logits_BTV[:, :-1].float(), dim=-1)


@torch.no_grad()
def ce_metrics(
    model,
    saes: Mapping[str, torch.nn.Module],
    hookpoint: str | Hookpoint,
    tokens_CT: torch.Tensor,
    keep_CT: torch.Tensor,
    mean_D: torch.Tensor,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
    autocast: bool | None = None,
) -> dict[str, dict]:
    """CE metrics for each SAE in `saes` (name → SAE) on the packed contexts `tokens_CT`.

    CE = mean next-token cross-entropy over all B·(T−1) predicted positions. Per batch:
    one clean forward, one zero-ablated and one mean-ablated forward (shared by all SAEs),
    and one spliced forward per SAE; each variant changes the hookpoint only at `keep_CT`
    (bool `[C, T]`; BOS and sinks are False and pass through). `mean_D` is the mean
    activation over the kept evaluation tokens. kl = mean over predicted positions of
    KL(clean ‖ spliced). SAEs must already be on `device` (default: the model's) in `dtype`;
    the spliced rows go there as `dtype` and come back to the model's device and dtype. The
    forwards run under bf16 `autocast` when on (`saelab.interventions`; default: on CUDA),
    the SAEs and the log-softmax sums in float32 or wider.
    """
    hp = parse_hookpoint(model, hookpoint)
    model_dev = model_device(model)
    device = torch.device(device) if device is not None else model_dev
    mean_D = mean_D.to(device=model_dev, dtype=torch.float32)
    names = list(saes)
    sums = {"clean": 0.0, "zero": 0.0, "mean": 0.0, **{f"sae:{n}": 0.0 for n in names}}
    kl_sums = dict.fromkeys(names, 0.0)
    n_pred = 0

    def sae_replace(sae):
        return lambda rows_ND: sae(rows_ND.to(device, dtype)).x_hat.to(rows_ND.device)

    variants = [
        ("zero", lambda rows_ND: torch.zeros_like(rows_ND)),
        ("mean", lambda rows_ND: mean_D.expand_as(rows_ND)),
        *[(f"sae:{n}", sae_replace(saes[n])) for n in names],
    ]
    bar = tqdm(
        total=tokens_CT.numel(),
        unit="tok",
        disable=not progress,
        desc=f"CE {hp}: clean, 2 ablations, {len(names)} SAE(s)",
    )
    for start in range(0, len(tokens_CT), batch_size):
        ids_BT = tokens_CT[start : start + batch_size].to(model_dev)
        keep_BT = keep_CT[start : start + batch_size].to(model_dev)
        targets_BT1 = ids_BT[:, 1:].unsqueeze(-1)
        lp_clean_BTV = _next_token_logprobs(interventions.logits(model, ids_BT, (), autocast))
        sums["clean"] -= float(lp_clean_BTV.gather(-1, targets_BT1).double().sum())
        p_clean_BTV = lp_clean_BTV.exp()
        for key, replace in variants:
            edit = interventions.splice(model, hp, replace, keep_BT)
            lp_BTV = _next_token_logprobs(interventions.logits(model, ids_BT, [edit], autocast))
            sums[key] -= float(lp_BTV.gather(-1, targets_BT1).double().sum())
            if key.startswith("sae:"):
                kl_BT = (p_clean_BTV * (lp_clean_BTV - lp_BTV)).sum(-1)
                kl_sums[key[4:]] += float(kl_BT.double().sum())
            del lp_BTV
        n_pred += targets_BT1.numel()
        bar.update(ids_BT.numel())
    bar.close()
    ce = {k: v / n_pred for k, v in sums.items()}
    results = {}
    for n in names:
        ce_sae = ce[f"sae:{n}"]
        results[n] = {
            "ce_clean": ce["clean"],
            "ce_sae": ce_sae,
            "ce_zero_ablate": ce["zero"],
            "ce_mean_ablate": ce["mean"],
            "ce_loss_recovered": ce_loss_recovered(ce["clean"], ce["zero"], ce_sae),
            "ce_loss_recovered_mean": ce_loss_recovered(ce["clean"], ce["mean"], ce_sae),
            "delta_ce": ce_sae - ce["clean"],
            "kl": kl_sums[n] / n_pred,
            "ce_predicted_tokens": n_pred,
        }
    return results
