"""`saelab.load_sae` tells formats by their files; hook names map to saelab's; errors; hub
references (a repo path or a SAELens release + SAE id download only the SAE's folder; the
download is replaced by a local folder here)."""

from types import SimpleNamespace

import huggingface_hub
import numpy as np
import pytest
from interop_reference import D, F, acts, assert_encodes, perturbed, random_weights

from saelab import interop, load_sae


@pytest.mark.parametrize(
    "name, hookpoint",
    [
        ("blocks.12.hook_resid_post", "resid_post.12"),
        ("blocks.0.hook_mlp_out", "mlp_out.0"),
        ("blocks.5.hook_attn_out", "attn_out.5"),
        ("layers.12", "resid_post.12"),
        ("model.layers.12", "resid_post.12"),
        ("model.layers.12.output", "resid_post.12"),
        ("layers.3.mlp", "mlp_out.3"),
        ("layers.3.self_attn", "attn_out.3"),
        ("model.layers.7.post_feedforward_layernorm.output", "mlp_out.7"),
        ("resid_post_layer_4", "resid_post.4"),
        ("attn_out_layer_2", "attn_out.2"),
        # heads before the output projection: saelab has no such site, the name is kept
        ("blocks.3.attn.hook_z", "blocks.3.attn.hook_z"),
        ("model.layers.3.self_attn.o_proj.input", "model.layers.3.self_attn.o_proj.input"),
    ],
)
def test_hook_names_map_to_saelab_hookpoints(name, hookpoint):
    assert interop.saelab_hookpoint(name) == hookpoint


@pytest.mark.parametrize(
    "save, fmt",
    [
        (lambda sae, p: sae.save(p), "saelab"),
        (interop.save_sae_lens, "sae_lens"),
        (interop.save_dictionary_learning, "dictionary_learning"),
        (interop.save_sparsify, "sparsify"),
    ],
)
def test_formats_are_told_by_their_files(tmp_path, save, fmt):
    folder = save(perturbed("topk"), tmp_path / "out")
    assert interop.detect_format(folder) == fmt
    assert load_sae(folder).cfg.source.get("format", "saelab") == fmt


def test_saelab_folders_load_as_before(tmp_path):
    """A saelab folder keeps its file dtype and loads bit for bit (no interop conversion)."""
    sae = perturbed("jumprelu").double()
    loaded = load_sae(sae.save(tmp_path / "sae"))
    assert loaded.W_dec_FD.dtype == sae.W_dec_FD.dtype
    assert all(loaded.state_dict()[k].equal(v) for k, v in sae.state_dict().items())
    assert loaded.cfg.source == {} and loaded.cfg.neuronpedia_id == "tiny/3-res"


def test_unknown_format_names_the_folder_and_its_files(tmp_path):
    folder = tmp_path / "mystery"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 8)
    with pytest.raises(
        ValueError, match=r"mystery: unknown SAE format \(found \['weights.bin'\]\)"
    ):
        load_sae(folder)
    (folder / "cfg.json").write_text('{"something": 1}')
    with pytest.raises(ValueError, match="unknown SAE format"):
        load_sae(folder)
    with pytest.raises(FileNotFoundError, match="no SAE folder"):
        load_sae(tmp_path / "absent")


def test_foreign_sae_must_fit_the_model(tmp_path):
    folder = interop.save_sae_lens(perturbed("relu"), tmp_path / "lens")
    wrong = SimpleNamespace(config=SimpleNamespace(hidden_size=D + 8))
    with pytest.raises(ValueError, match=rf"lens: this SAE takes d_in={D}.*hidden size is {D + 8}"):
        load_sae(folder, model=wrong)
    right = SimpleNamespace(config=SimpleNamespace(hidden_size=D))
    assert load_sae(folder, model=right).cfg.width == F
    with pytest.raises(ValueError, match="was trained on resid_post.3, not resid_post.4"):
        load_sae(folder, hookpoint="resid_post.4")


def test_writers_are_atomic(tmp_path, monkeypatch):
    """A write that fails after the weights are written leaves the previous folder whole and
    no half-written sibling."""
    folder = interop.save_sae_lens(perturbed("relu"), tmp_path / "lens")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(interop.sae_lens, "write_json", disk_full)  # after the weights
    with pytest.raises(OSError, match="No space left"):
        interop.save_sae_lens(perturbed("topk"), tmp_path / "lens")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lens"]


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """`snapshot_download` that records its call and returns a local 'snapshot'."""
    calls = []

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, allow_patterns))
        return str(tmp_path / "hub" / repo_id.replace("/", "--"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_repo_path_downloads_only_the_sae_folder(tmp_path, fake_hub):
    interop.save_sparsify(perturbed("topk"), tmp_path / "hub" / "EleutherAI--sae-tiny")
    sae = load_sae("EleutherAI/sae-tiny/layers.3")
    assert fake_hub == [("EleutherAI/sae-tiny", ["layers.3/*"])]
    assert sae.kind == "topk" and sae.cfg.hookpoint == "resid_post.3"
    assert sae.cfg.source["hub"] == "EleutherAI/sae-tiny/layers.3"


def test_sae_lens_release_and_id(tmp_path, fake_hub):
    """The release directory SAELens ships maps the id to the repo folder, the model and the
    Neuronpedia id."""
    pytest.importorskip("sae_lens")
    snapshot = tmp_path / "hub" / "google--gemma-scope-2b-pt-res"
    folder = snapshot / "layer_12" / "width_16k" / "average_l0_82"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **random_weights())
    sae = load_sae("gemma-scope-2b-pt-res-canonical", sae_id="layer_12/width_16k/canonical")
    assert fake_hub == [("google/gemma-scope-2b-pt-res", ["layer_12/width_16k/average_l0_82/*"])]
    assert sae.kind == "jumprelu" and sae.cfg.hookpoint == "resid_post.12"
    assert sae.cfg.model == "gemma-2-2b"
    assert sae.cfg.neuronpedia_id == "gemma-2-2b/12-gemmascope-res-16k"


def test_unknown_release_id_and_failed_download(monkeypatch):
    pytest.importorskip("sae_lens")
    with pytest.raises(ValueError, match="'layer_99/x' is not in release"):
        load_sae("gemma-scope-2b-pt-res-canonical", sae_id="layer_99/x")

    def offline(repo_id, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="fetching org/repo/sae from the Hugging Face"):
        load_sae("org/repo/sae")


def test_local_folders_never_reach_the_hub(tmp_path, fake_hub, monkeypatch):
    interop.save_sae_lens(perturbed("relu"), tmp_path / "out" / "lens")
    monkeypatch.chdir(tmp_path)
    assert load_sae("out/lens").kind == "relu"  # relative, two parts, but it exists
    assert fake_hub == []


def test_release_norm_factor_is_folded(tmp_path, fake_hub):
    """A SAELens folder trained on scaled inputs (`expected_average_only_in`) is refused
    alone, and loads with the factor its release lists: SAE(s·x) / s, as SAELens folds it."""
    pytest.importorskip("sae_lens")
    from test_interop_sae_lens import sae_lens_reference, write_sae_lens

    from saelab.interop.hub import release_entry

    entry = release_entry("gpt2-small-mlp-tm", "blocks.0.hook_mlp_out")
    s = entry["norm_scaling_factor"]
    snapshot = tmp_path / "hub" / entry["repo_id"].replace("/", "--")
    tensors, cfg = write_sae_lens(
        snapshot / entry["folder"], normalize_activations="expected_average_only_in"
    )
    with pytest.raises(ValueError, match="normalize_activations"):
        load_sae(snapshot / entry["folder"])
    sae = load_sae("gpt2-small-mlp-tm", sae_id="blocks.0.hook_mlp_out")
    assert sae.cfg.input_scale == pytest.approx(s)
    assert sae.cfg.model == "gpt2"  # the file's own model name wins over the release's
    x = acts()
    f, x_hat = sae_lens_reference(tensors, cfg, x * s)
    assert_encodes(sae, x, f, x_hat / s)
