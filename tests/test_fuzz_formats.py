"""Fuzzed SAE folders: `saelab.load_sae` either raises a ValueError (an `SAEFileError`)
that names the file, or, when the bytes still describe an SAE, loads exactly what they
say. Never a KeyError/TypeError/struct error/raw JSON or safetensors error, never weights
that disagree with the files."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import saelab
from saelab.io import write_safetensors
from saelab.sae.folder import CFG_FILE, WEIGHTS_FILE, SAEFileError
from saelab.sae.registry import SAE_KINDS

KINDS = sorted(kind for kind, cls in SAE_KINDS.items() if not cls.composite)
FUZZ = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "Q4", ""]


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    """One small saved SAE (d_in 8, width 16) of every kind, with non-trivial weights."""
    root = tmp_path_factory.mktemp("templates")
    out = {}
    for kind in KINDS:
        opts = {"k": 4} if SAE_KINDS[kind].sparsity_field == "k" else {}
        sae = saelab.make_sae(kind, 8, 16, seed=1, **opts)
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(0.01 * torch.randn_like(p))
        out[kind] = sae.save(root / kind)
    return out


def copy_of(template: Path, tmp: str) -> Path:
    return Path(shutil.copytree(template, Path(tmp) / "sae"))


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bytes (so NaN payloads compare too)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_loads_clearly(folder: Path) -> None:
    """Load `folder`: a ValueError naming the folder or one of its files, or an SAE that is
    exactly what cfg.json and sae.safetensors say."""
    try:
        sae = saelab.load_sae(folder)
    except ValueError as err:  # SAEFileError, or interop's "unknown SAE format" for no kind
        assert str(folder) in str(err), f"the error does not name the file: {err}"
        event(f"refused: {type(err).__name__}")
        return
    event("loaded")
    raw = json.loads((folder / CFG_FILE).read_text())
    stored = load_file(folder / WEIGHTS_FILE)
    assert sae.kind == raw["kind"]
    assert (sae.cfg.d_in, sae.cfg.width) == (raw["d_in"], raw["width"])
    state = sae.state_dict()
    assert sorted(state) == sorted(stored)
    for name, value in stored.items():
        assert value.dtype == state[name].dtype and torch.equal(bits(value), bits(state[name]))
    assert sae.W_dec_FD.shape == (raw["width"], raw["d_in"])
    assert sae(torch.zeros(2, raw["d_in"], dtype=sae.W_dec_FD.dtype)).x_hat.shape == (
        2,
        raw["d_in"],
    )


# --- cfg.json -------------------------------------------------------------------------------
@st.composite
def mutated_cfg(draw, templates_cfg: dict[str, dict]) -> tuple[str, dict]:
    kind = draw(st.sampled_from(KINDS))
    cfg = dict(templates_cfg[kind])
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(cfg) + ["extra", "kind", "d_in", "width"]))
        action = draw(st.sampled_from(["drop", "json", "int", "kind"]))
        if action == "drop":
            cfg.pop(key, None)
        elif action == "json":
            cfg[key] = draw(JSON)
        elif action == "int":  # huge, negative, zero, off by one
            cfg[key] = draw(st.sampled_from([0, -1, 1, 7, 9, 15, 17, 2**40, -(2**63), 10**30]))
        else:
            cfg["kind"] = draw(st.sampled_from(KINDS + ["gated", "", "TopK"]) | JSON)
    return kind, cfg


def test_fuzzed_cfg_json_is_clear_error_or_faithful_load(templates):
    templates_cfg = {kind: json.loads((p / CFG_FILE).read_text()) for kind, p in templates.items()}

    @FUZZ
    @given(case=mutated_cfg(templates_cfg))
    def run(case):
        kind, cfg = case
        with tempfile.TemporaryDirectory() as tmp:
            folder = copy_of(templates[kind], tmp)
            (folder / CFG_FILE).write_text(json.dumps(cfg))
            assert_loads_clearly(folder)

    run()


def test_cfg_json_not_an_object_or_not_json_is_clear_error(templates):
    @FUZZ
    @given(kind=st.sampled_from(KINDS), value=JSON, cut=st.integers(0, 400), junk=st.binary())
    def run(kind, value, cut, junk):
        with tempfile.TemporaryDirectory() as tmp:
            folder = copy_of(templates[kind], tmp)
            text = (folder / CFG_FILE).read_bytes()
            for content in (json.dumps(value).encode(), text[:cut], junk, text[:cut] + junk):
                (folder / CFG_FILE).write_bytes(content)
                assert_loads_clearly(folder)

    run()


# --- sae.safetensors ------------------------------------------------------------------------
def split_file(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_file(header: dict, body: bytes) -> bytes:
    head = json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + body


@st.composite
def mutated_header(draw, header: dict) -> dict:
    header = {k: dict(v) for k, v in header.items()}
    names = sorted(header)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names))
        action = draw(st.sampled_from(["dtype", "shape", "offsets", "drop", "rename", "json"]))
        if not isinstance(header.get(name), dict):  # dropped, renamed or replaced already
            continue
        if action == "dtype":
            header[name]["dtype"] = draw(st.sampled_from(DTYPES))
        elif action == "shape":
            header[name]["shape"] = draw(st.lists(st.integers(0, 40), max_size=3))
        elif action == "offsets":
            header[name]["data_offsets"] = draw(st.lists(st.integers(-1, 2**20), max_size=3))
        elif action == "drop":
            header.pop(name)
        elif action == "rename":
            header[draw(st.text(max_size=10))] = header.pop(name)
        else:
            header[name] = draw(JSON)
    return header


def test_fuzzed_safetensors_header_is_clear_error_or_faithful_load(templates):
    @FUZZ
    @given(kind=st.sampled_from(KINDS), data=st.data())
    def run(kind, data):
        with tempfile.TemporaryDirectory() as tmp:
            folder = copy_of(templates[kind], tmp)
            header, body = split_file((folder / WEIGHTS_FILE).read_bytes())
            new_header = data.draw(mutated_header(header))
            (folder / WEIGHTS_FILE).write_bytes(join_file(new_header, body))
            assert_loads_clearly(folder)

    run()


def test_random_truncated_or_lying_safetensors_bytes_are_clear_errors(templates):
    @FUZZ
    @given(
        kind=st.sampled_from(KINDS),
        junk=st.binary(max_size=64),
        cut=st.integers(0, 3000),
        length=st.integers(0, 2**64 - 1),
    )
    def run(kind, junk, cut, length):
        with tempfile.TemporaryDirectory() as tmp:
            folder = copy_of(templates[kind], tmp)
            good = (folder / WEIGHTS_FILE).read_bytes()
            lying = length.to_bytes(8, "little") + good[8:]
            for content in (junk, good[:cut], lying, good[:8] + junk):
                (folder / WEIGHTS_FILE).write_bytes(content)
                assert_loads_clearly(folder)

    run()


def test_well_formed_weights_of_wrong_dtype_or_shape_are_refused(templates):
    """Valid safetensors files whose tensors do not fit: each refusal names the tensor."""
    sae = saelab.load_sae(templates["topk"])
    state = sae.state_dict()
    cases = {
        "W_enc_DF is torch.float64": {**state, "W_enc_DF": state["W_enc_DF"].double()},
        "W_dec_FD is torch.int32, not a float": {**state, "W_dec_FD": state["W_dec_FD"].int()},
        r"b_enc_F has shape \(17,\)": {**state, "b_enc_F": torch.zeros(17)},
        r"W_dec_FD has shape \(16, 9\) but cfg.json \(d_in=8, width=16\)": {
            **state,
            "W_dec_FD": torch.zeros(16, 9),
        },
        r"missing \['b_dec_D'\]": {k: v for k, v in state.items() if k != "b_dec_D"},
        r"unexpected \['threshold'\]": {**state, "threshold": torch.zeros(())},
    }
    for message, tensors in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = copy_of(templates["topk"], tmp)
            write_safetensors(folder / WEIGHTS_FILE, tensors)
            with pytest.raises(SAEFileError, match=message):
                saelab.load_sae(folder)
