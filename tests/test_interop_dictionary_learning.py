"""dictionary_learning `trainer_i/` folders (ae.pt + config.json), written here from its
source's layout (the package pins nnsight < 0.4 and cannot share saelab's environment)."""

import json

import pytest
import torch
from interop_reference import (
    D,
    F,
    K,
    acts,
    assert_encodes,
    assert_same_sae,
    f64,
    jump,
    perturbed,
    random_weights,
    relu,
    topk_dense,
)

from saelab import interop, load_sae

CLASSES = ["AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder"]


def state_of(dict_class: str, threshold: float = 0.35) -> dict[str, torch.Tensor]:
    """The state dict each class's `state_dict()` holds (nn.Linear weights are [out, in])."""
    w = {k: torch.from_numpy(v) for k, v in random_weights().items()}
    if dict_class == "JumpReluAutoEncoder":
        return w
    state = {
        "encoder.weight": w["W_enc"].T.contiguous(),
        "encoder.bias": w["b_enc"],
        "decoder.weight": w["W_dec"].T.contiguous(),
    }
    if dict_class == "AutoEncoder":
        return {**state, "bias": w["b_dec"]}
    return {
        **state,
        "b_dec": w["b_dec"],
        "k": torch.tensor(K, dtype=torch.int),
        "threshold": torch.tensor(threshold, dtype=torch.float32),
    }


def write_trainer(folder, dict_class, state=None, **trainer_extra):
    folder.mkdir(parents=True)
    state = state_of(dict_class) if state is None else state
    torch.save(state, folder / "ae.pt")
    trainer = {
        "trainer_class": "TopKTrainer",
        "dict_class": dict_class,
        "activation_dim": D,
        "dict_size": F,
        "k": K,
        "layer": 3,
        "lm_name": "EleutherAI/pythia-70m-deduped",
        "submodule_name": "resid_post_layer_3",
        **trainer_extra,
    }
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {}}))
    return {k: v.double().numpy() for k, v in state.items()}


def dl_reference(dict_class, t, x):
    """Each class's encode/decode as dictionary.py and trainers/*.py define them."""
    t = f64(t)
    if dict_class == "JumpReluAutoEncoder":  # apply_b_dec_to_input = False
        f = jump(x @ t["W_enc"] + t["b_enc"], t["threshold"])
        return f, f @ t["W_dec"] + t["b_dec"]
    b_dec = t["bias" if dict_class == "AutoEncoder" else "b_dec"]
    post_relu = relu((x - b_dec) @ t["encoder.weight"].T + t["encoder.bias"])
    if dict_class == "AutoEncoder":
        f = post_relu
    elif dict_class == "AutoEncoderTopK":  # use_threshold=False by default
        f = topk_dense(post_relu, int(t["k"]))
    else:  # BatchTopKSAE: use_threshold=True by default
        f = post_relu * (post_relu > t["threshold"])
    return f, f @ t["decoder.weight"].T + b_dec


@pytest.mark.parametrize("dict_class", CLASSES)
def test_dictionary_learning_encodes_as_its_source(tmp_path, dict_class):
    t = write_trainer(tmp_path / "trainer_0", dict_class)
    sae = load_sae(tmp_path / "trainer_0")
    kind = interop.dictionary_learning.KIND_OF_CLASS[dict_class]
    assert sae.kind == kind and sae.cfg.hookpoint == "resid_post.3"
    assert sae.cfg.model == "EleutherAI/pythia-70m-deduped"
    x = acts()
    assert_encodes(sae, x, *dl_reference(dict_class, t, x))


def test_unset_batchtopk_threshold_keeps_every_relu_code(tmp_path):
    """threshold = -1 (never set): relu(pre)·1[relu(pre) > -1] = relu(pre)."""
    state = state_of("BatchTopKSAE", threshold=-1.0)
    t = write_trainer(tmp_path / "t", "BatchTopKSAE", state)
    x = acts()
    assert_encodes(load_sae(tmp_path / "t"), x, *dl_reference("BatchTopKSAE", t, x))


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu"])
def test_round_trip_through_dictionary_learning_is_bit_exact(tmp_path, kind):
    sae = perturbed(kind)
    folder = interop.save_dictionary_learning(sae, tmp_path / "trainer_0")
    trainer = json.loads((folder / "config.json").read_text())["trainer"]
    assert trainer["submodule_name"] == "resid_post_layer_3" and trainer["layer"] == 3
    state = torch.load(folder / "ae.pt", weights_only=True)
    dict_class = interop.dictionary_learning.CLASS_OF_KIND[kind]
    assert set(state) == set(state_of(dict_class))
    x = acts()
    t = {k: v.double().numpy() for k, v in state.items()}
    assert_encodes(sae, x, *dl_reference(dict_class, t, x))
    assert_same_sae(sae, load_sae(folder))


class NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    """Only torch's weights-only unpickler reads ae.pt; a pickled object is refused before
    anything in it runs."""
    folder = tmp_path / "evil"
    write_trainer(folder, "AutoEncoder")
    torch.save({"encoder.weight": NotATensor()}, folder / "ae.pt")
    with pytest.raises(ValueError, match=r"ae.pt: refused: not a plain state dict"):
        load_sae(folder)
    torch.save([torch.zeros(2)], folder / "ae.pt")  # loads weights-only, but is not a dict
    with pytest.raises(ValueError, match="ae.pt: refused: holds list"):
        load_sae(folder)


def test_malformed_dictionary_learning_folders(tmp_path):
    write_trainer(tmp_path / "a", "AutoEncoder", dict_size=F + 4)
    with pytest.raises(
        ValueError, match=rf"encoder.weight has shape \({F}, {D}\).*dict_size={F + 4}"
    ):
        load_sae(tmp_path / "a")
    state = state_of("JumpReluAutoEncoder")
    del state["threshold"]
    write_trainer(tmp_path / "b", "JumpReluAutoEncoder", state)
    with pytest.raises(ValueError, match=r"ae.pt.*missing \['threshold'\]"):
        load_sae(tmp_path / "b")
    write_trainer(tmp_path / "c", "AutoEncoderTopK", k=K + 1)
    with pytest.raises(ValueError, match=rf"buffer k={K} but config.json says k={K + 1}"):
        load_sae(tmp_path / "c")
    write_trainer(tmp_path / "d", "GatedAutoEncoder", state=state_of("AutoEncoder"))
    with pytest.raises(ValueError, match="dict_class 'GatedAutoEncoder' has no saelab kind"):
        load_sae(tmp_path / "d")
