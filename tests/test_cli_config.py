"""The saelab command's help, its configs (configs/ parses into the README's settings),
its one-line errors for bad input, and `load_model(remote=...)` reaching nnsight."""

import contextlib
import io
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import saelab
from saelab.cli import build_parser, main
from saelab.commands import compare
from saelab.commands.config import apply_to_flags, check_keys

CONFIGS = Path(__file__).parent.parent / "configs"
TINY = CONFIGS / "tiny"
COMMANDS = ("quickstart", "train", "eval", "compare", "cache", "flow", "steer", "report")
FLAG_CONFIGS = {"quickstart": "quickstart", "flow_run_a": "flow", "flow_run_b": "flow"}
FLAG_CONFIGS["steer"] = "steer"


def error_of(*argv) -> str:
    """The one-line message `main(argv)` stops with."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    return str(stop.value)


def test_python_m_saelab_help_lists_every_command():
    done = subprocess.run(
        [sys.executable, "-m", "saelab", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for command in COMMANDS:
        assert f"\n    {command}" in done.stdout, command
    assert "torchrun --nproc_per_node=2 -m saelab train" in done.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_has_an_example(command):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert "example" in out.getvalue()
    if command != "report":
        assert "--set KEY=VALUE" in out.getvalue()


def flag_namespace(command: str, path: Path):
    parser, flag_parsers = build_parser()
    argv = [command, str(path)]
    return apply_to_flags(parser, flag_parsers[command], argv, parser.parse_args(argv))


def test_flag_configs_give_the_readme_settings():
    run_a = flag_namespace("flow", CONFIGS / "flow_run_a.toml")
    assert run_a.layers == list(range(8, 17)) and run_a.deactivation_layers == [10, 12, 14]
    assert (run_a.width, run_a.k, run_a.max_tokens, run_a.float16_cache) == (
        4608,
        32,
        200_000,
        True,
    )
    run_b = flag_namespace("flow", CONFIGS / "flow_run_b.toml")
    assert run_b.layers == [10, 11, 12] and (run_b.width, run_b.max_tokens) == (1152, 400_000)
    assert run_b.out == Path("runs/flow_b")
    steer = flag_namespace("steer", CONFIGS / "steer.toml")
    assert steer.seed == ("resid_post", 12, 0) and steer.saes == Path("runs/flow_b/saes")
    assert (steer.temperature, steer.top_p, steer.sample) == (1.27, 0.7, True)
    parser, flag_parsers = build_parser()
    argv = ["flow", "--set", "layers=12", "--set", "deactivation_layers=[12]"]
    argv += ["--set", 'methods=["top5"]', "--set", "max_tokens=1000"]
    one = apply_to_flags(parser, flag_parsers["flow"], argv, parser.parse_args(argv))
    assert (one.layers, one.deactivation_layers, one.methods) == ([12], [12], "top5")
    assert one.max_tokens == 1000
    quick = flag_namespace("quickstart", CONFIGS / "quickstart.toml")
    assert (quick.max_tokens, quick.width, quick.target_l0) == (150_000, 4608, 40.0)


@pytest.mark.parametrize("name", ["domains", "residual", "hierarchical", "kron"])
def test_compare_configs_name_only_the_functions_arguments(name):
    config = tomllib.loads((CONFIGS / f"{name}.toml").read_text())
    assert (CONFIGS / f"{name}.toml").read_text().startswith("# README")
    function = compare.experiment_function(config)
    assert function.__name__ == f"compare_{name}"
    check_keys("compare", config["compare"], compare.allowed_keys(function), "compare")
    assert config["compare"]["hookpoint"] == "resid_post.15"


def test_every_config_names_its_readme_table():
    files = sorted(CONFIGS.glob("*.toml"))
    assert {f.stem for f in files} == {
        *FLAG_CONFIGS,
        *("domains", "residual", "hierarchical", "kron"),
    }
    for path in files:
        assert path.read_text().startswith("# README"), path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "nope.toml"], "saelab train: error: config file nope.toml does not exist"),
        (
            ["train", TINY / "train.toml", "--set", "train_sae.widht=64"],
            "unknown key [train_sae] 'widht'; allowed: store, kind, width,",
        ),
        (["train", TINY / "train.toml", "--set", "outt=x"], "unknown key 'outt'; allowed: out,"),
        (["train", TINY / "train.toml", "--set", "width256"], "write key=value"),
        (["train", TINY / "train.toml", "--set", "train_sae.width=[1,"], "is not a TOML value"),
        (["train", TINY / "train.toml", "--set", "out.x=1"], "--set out.x=1: out is not a table"),
        (["cache", TINY / "cache.toml", "--set", "harvest.dtype=fp8"], "one of float32, float16"),
        (["cache", TINY / "cache.toml", "--set", "harvest={}"], "[harvest] needs hookpoints"),
        (["train", TINY / "train.toml", "--set", "train_sae.store=/nonexistent"], "not an acti"),
        (["train", TINY / "train.toml", "--set", "train_sae.kind=relux"], "relux"),
        (
            ["compare", TINY / "compare_hierarchical.toml", "--set", "experiment=kron"],
            "unknown key [compare] 'width'; allowed: hookpoint, trained_on, evaluated_on,",
        ),
        (["compare", TINY / "compare_hierarchical.toml", "--set", "experiment=x"], "one of dom"),
        (["compare", TINY / "compare_hierarchical.toml", "--set=compare.k=1"], "key [compare] 'k'"),
        (["flow", TINY / "flow.toml", "--set", "widht=3"], "unknown key 'widht'; allowed: layers"),
        (["quickstart", "--set", "max_token=5"], "unknown key 'max_token'; allowed: out,"),
        (["steer", "--set", "strength=2"], "--saes is needed"),
    ],
)
def test_bad_input_stops_with_one_line(argv, message):
    text = error_of(*argv)
    assert message in text and "\n" not in text


def test_a_key_for_another_kind_lists_this_kinds_options():
    text = error_of("train", TINY / "train.toml", "--set", "train_sae.k_set=all")
    assert "unknown key [train_sae] 'k_set'" in text and ", k," in text  # topk has k, not k_set


def test_invalid_toml_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train_sae\nwidth = 3\n")
    assert f"{bad} is not valid TOML" in error_of("train", bad)


def test_torchrun_training_needs_a_cache(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "under torchrun, train from a cache" in error_of("train", TINY / "train.toml")


def test_remote_local_sends_every_trace_through_nnsights_remote_path(monkeypatch, stories):
    from nnsight.intervention.backends.local import LocalSimulationBackend

    calls = []
    original = LocalSimulationBackend.__call__

    def counted(self, tracer):
        calls.append(tracer)
        return original(self, tracer)

    monkeypatch.setattr(LocalSimulationBackend, "__call__", counted)
    model = saelab.load_model("stories260k", device="cpu", remote="local")
    assert model.saelab_remote == "local"
    texts = saelab.load_corpus("medical", split="test")
    options = dict(max_tokens=512, ctx_len=64, batch_size=4, progress=False)
    remote = saelab.harvest(model, "resid_post.2", texts, **options)
    assert len(calls) == 2  # 8 contexts in batches of 4: each trace went remote
    local = saelab.harvest(stories, "resid_post.2", texts, **options)
    rows = torch.arange(len(local))
    assert len(calls) == 2 and torch.equal(remote.get(rows), local.get(rows))


def test_remote_execution_refuses_a_local_model():
    with pytest.raises(ValueError, match="runs a hub model on NDIF"):
        saelab.load_model("stories260k", remote=True)
