"""One SAE per hookpoint of a span of blocks, from one aligned harvest (feature flow needs
every position of a block: `resid_post.{L-1}`, `attn_out.L`, `mlp_out.L`, `resid_post.L`).

The harvest reads all the hookpoints in one pass over the text (it stops after the deepest
block), so their stores share rows; with `cache=` it goes to disk, and
`cache_dtype=torch.float16` halves it (SmolLM2 layers 8-16: 28 hookpoints x 200k tokens x
576 dims is 13 GB in float32, 6.5 GB in float16).
"""

from __future__ import annotations

from pathlib import Path

import torch

from saelab.activations import harvest
from saelab.data import load_corpus
from saelab.sae import load_sae
from saelab.train import train_sae

SITES = ("resid_post", "mlp_out", "attn_out")


def layer_hookpoints(layers, sites=SITES) -> list[str]:
    """The hookpoints flow needs for target blocks `layers`: `resid_post` from the block
    before the first to the last, and the other sites at each block, in depth order."""
    layers = sorted(int(layer) for layer in layers)
    if not layers or layers[0] < 1:
        raise ValueError(
            f"flow needs target layers >= 1 (their block input is resid_post.L-1), got {layers}"
        )
    names = [f"resid_post.{layers[0] - 1}"] if "resid_post" in sites else []
    for layer in layers:
        names += [
            f"{site}.{layer}" for site in ("attn_out", "mlp_out", "resid_post") if site in sites
        ]
    return names


def train_layer_saes(
    model,
    layers,
    sites=SITES,
    corpus: str = "medical",
    stores: dict | None = None,
    kind: str = "topk",
    width: int = 4608,
    max_tokens: int = 200_000,
    ctx_len: int = 128,
    cache: str | Path | None = None,
    cache_dtype: torch.dtype = torch.float32,
    device=None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    seed: int = 0,
    **train_options,
) -> dict:
    """`{hookpoint: SAE}` for `layer_hookpoints(layers, sites)`, each an SAE of `kind` and
    `width` (`train_options`: the kind's sparsity option, lr, ...) trained on the same tokens.

    `stores` (an aligned dict from one `saelab.harvest`) is used as given; otherwise the first
    `max_tokens` tokens of `corpus`'s train split are harvested once for all hookpoints.
    Hookpoint `i` (in `layer_hookpoints` order) trains with seed `seed + i`: with one seed every
    SAE of a width would start from the same random decoder, and matching would pair feature
    `j` with feature `j` of the next layer (95% of top-1 matches on stories260K, 0.8% with
    distinct seeds).
    """
    names = layer_hookpoints(layers, sites)
    if stores is None:
        texts = load_corpus(corpus, split="train")
        # on the model's own device; `device` is where the SAEs train
        where = {"cache": cache, "dtype": cache_dtype, "progress": progress}
        stores = harvest(model, names, texts, max_tokens=max_tokens, ctx_len=ctx_len, **where)
    missing = [name for name in names if name not in stores]
    if missing:
        raise ValueError(f"the stores lack {missing}; harvest {names} in one call")
    run = {"device": device, "dtype": dtype, "progress": progress}
    return {
        name: train_sae(stores[name], kind=kind, width=width, seed=seed + i, **run, **train_options)
        for i, name in enumerate(names)
    }


def save_layer_saes(saes: dict, folder: str | Path) -> Path:
    """Each SAE to `folder/<hookpoint>/` (each written atomically)."""
    folder = Path(folder)
    for name, sae in saes.items():
        sae.save(folder / name)
    return folder


def load_layer_saes(folder: str | Path, model=None) -> dict:
    """`{hookpoint: SAE}` from the sub-folders of `folder` (as `save_layer_saes` wrote them),
    each checked against the hookpoint it is filed under (and `model`'s width, if given)."""
    folder = Path(folder)
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        raise FileNotFoundError(f"no SAE folders in {folder}")
    return {p.name: load_sae(p, model=model, hookpoint=p.name) for p in subs}
