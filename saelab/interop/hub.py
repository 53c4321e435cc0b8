"""SAEs on the Hugging Face hub: a repo path (`owner/repo` or `owner/repo/sub/folder`), or
a SAELens release name with an SAE id (`gemma-scope-2b-pt-res-canonical`,
`layer_12/width_16k/canonical`), looked up in the directory SAELens ships.

Only the SAE's own folder is downloaded (`snapshot_download` with `allow_patterns`); the
folder is then read like any local one. A release also gives the model, the Neuronpedia
id, and the activation norm factor some releases need folded.
"""

from __future__ import annotations

from pathlib import Path


def looks_like_hub_path(path: str | Path) -> bool:
    """`owner/repo[/...]` that is not a local path: relative, two parts or more, absent."""
    text = str(path)
    return (
        not Path(text).exists()
        and not text.startswith(("/", ".", "~"))
        and len([p for p in text.split("/") if p]) >= 2
    )


def release_entry(release: str, sae_id: str) -> dict:
    """repo_id, folder, model, neuronpedia_id, norm_scaling_factor of a SAELens release."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError as err:
        raise ImportError(
            "a SAELens release name needs sae-lens (pip install 'saelab[interop]'); "
            "or give the hub repo path, e.g. 'google/gemma-scope-2b-pt-res/layer_12/...'"
        ) from err
    info = get_pretrained_saes_directory().get(release)
    if info is None:
        raise ValueError(f"{release!r} is not a SAELens release")
    if sae_id not in info.saes_map:
        some = sorted(info.saes_map)[:5]
        raise ValueError(f"SAE id {sae_id!r} is not in release {release!r} (ids like {some})")
    return {
        "repo_id": info.repo_id,
        "folder": info.saes_map[sae_id],
        "model": info.model,
        "neuronpedia_id": info.neuronpedia_id.get(sae_id) or "",
        "norm_scaling_factor": info.norm_scaling_factor.get(sae_id),
    }


def fetch(path: str, sae_id: str | None = None) -> tuple[Path, dict]:
    """(local folder, what the release says about the SAE) for a hub reference."""
    if sae_id is not None:
        entry = release_entry(path, sae_id)
    else:
        parts = [p for p in str(path).split("/") if p]
        entry = {"repo_id": "/".join(parts[:2]), "folder": "/".join(parts[2:])}
    from huggingface_hub import snapshot_download

    folder = entry["folder"].strip("/")
    try:
        root = snapshot_download(
            entry["repo_id"], allow_patterns=[f"{folder}/*"] if folder else None
        )
    except Exception as err:  # offline, unknown repo, no access: all mean "not found here"
        raise FileNotFoundError(
            f"no SAE folder at {path}, and fetching {entry['repo_id']}/{folder}".rstrip("/")
            + f" from the Hugging Face hub failed: {type(err).__name__}: {err}"
        ) from err
    return Path(root) / folder, entry
