"""Tests of the Hydra configs (slimkit.conf) and their validation (slimkit.pipelines.config).

Each option of each group composes with the default config; bad values fail at compose time (types)
or when the RunSpec is built (ranges), always with a one-line ConfigError.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slimkit.core import ConfigError, PluginError
from slimkit.core.plugins import build_plugin_manager, build_registry
from slimkit.pipelines.config import build_spec, compose, to_plain

CONF = Path(__file__).resolve().parents[2] / "conf"
TOP_GROUPS = ("pipeline", "model", "data", "target", "tracking")


# Known bug (conf/data/digits.yaml): ``size: ${oc.select:model.input_size,32}`` gives None, not 32, when
# the model leaves input_size null, and DigitsDataConfig.size is an int; so a model option without an
# input_size does not compose with the default data=digits.
@pytest.fixture(scope="module")
def registry():
    return build_registry(build_plugin_manager(load_entrypoints=False))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def group_cases() -> list:
    cases = []
    for group in TOP_GROUPS:
        for option in options(group):
            cases.append(pytest.param(group, option, id=f"{group}={option}"))
    return cases


def compose_plain(overrides: list[str]) -> dict:
    return to_plain(compose(overrides))


def one_line_config_error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as exc:
        compose_plain(overrides)
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- every option composes ------------------------------------------------------------------------


def test_groups_have_options() -> None:
    assert {"default", "finetune", "magnitude", "none", "prune"} <= set(options("pipeline"))
    assert {"digits_cnn", "digits_resnet", "torch"} <= set(options("model"))
    assert options("data") and options("target") and options("tracking")
    assert {"magnitude_prune", "finetune"} <= set(options("technique"))


def test_default_config(registry, tmp_path: Path) -> None:
    plain = compose_plain([])
    assert "hydra" not in plain
    assert plain["seed"] == 0 and plain["cache"] is True
    assert plain["pipeline"]["name"] == "default"
    stages = plain["pipeline"]["stages"]
    assert [stages[s]["technique"] for s in stages] == ["channel_prune", "distill", "quantize"]
    assert plain["model"]["name"] == "digits_resnet"
    assert plain["data"]["name"] == "digits"
    assert plain["target"]["name"] == "cpu"
    assert plain["tracking"]["name"] == "mlflow"
    spec = build_spec(plain, registry, tmp_path)
    assert [s.name for s in spec.stages] == ["prune", "distill", "quantize"]
    prune, distill, quantize = (s.config for s in spec.stages)
    assert (prune.ratio, prune.finetune) == (0.5, "distill")
    assert distill.epochs >= 1
    assert (quantize.mode, quantize.per_channel) == ("static", True)
    assert quantize.threads == plain["target"]["threads"]
    assert spec.cache_dir == Path(".slimkit/cache")


@pytest.mark.parametrize(("group", "option"), group_cases())
def test_every_option_composes(group: str, option: str, registry, tmp_path: Path) -> None:
    plain = compose_plain([f"{group}={option}"])
    assert plain[group]["name"] == option
    spec = build_spec(plain, registry, tmp_path)
    if group == "pipeline":
        assert spec.pipeline_name == option
    else:
        assert getattr(spec, group) == plain[group]


@pytest.mark.parametrize("technique", options("technique"))
def test_every_technique_composes_into_a_stage(technique: str, registry, tmp_path: Path) -> None:
    plain = compose_plain(["pipeline=magnitude", f"technique@pipeline.stages.prune={technique}"])
    stage = plain["pipeline"]["stages"]["prune"]
    assert stage["technique"] == technique
    spec = build_spec(plain, registry, tmp_path)
    (built,) = spec.stages
    assert built.technique.name == technique
    assert isinstance(built.config, built.technique.Config)
    # the YAML option takes its defaults from the technique's Config dataclass
    assert stage == {k: v for k, v in vars(built.technique.Config(technique=technique)).items()}


def test_technique_swaps_a_stage() -> None:
    # (a pipeline that sets stage values, like the default, keeps them: swap a stage of pipeline=magnitude)
    stage = compose_plain(["pipeline=magnitude", "technique@pipeline.stages.prune=finetune"])["pipeline"]["stages"][
        "prune"
    ]
    assert stage["technique"] == "finetune"
    assert "epochs" in stage
    assert "sparsity" not in stage


def test_pipeline_magnitude_is_the_former_default(registry, tmp_path: Path) -> None:
    plain = compose_plain(["pipeline=magnitude"])
    spec = build_spec(plain, registry, tmp_path)
    assert [(s.name, s.technique.name) for s in spec.stages] == [("prune", "magnitude_prune")]
    assert spec.stages[0].config.sparsity == 0.5


def test_pipeline_prune_overrides_technique_defaults() -> None:
    stage = compose_plain(["pipeline=prune"])["pipeline"]["stages"]["prune"]
    assert (stage["sparsity"], stage["steps"], stage["finetune_epochs"]) == (0.9, 4, 2)
    assert stage["scope"] == "global"  # from MagnitudePruneConfig


def test_pipeline_none_has_no_stages(registry, tmp_path: Path) -> None:
    plain = compose_plain(["pipeline=none"])
    assert plain["pipeline"]["stages"] == {}
    assert build_spec(plain, registry, tmp_path).stages == []


def test_data_size_follows_the_model() -> None:
    assert compose_plain(["model=digits_cnn"])["data"]["size"] == 8
    assert compose_plain(["model=digits_resnet"])["data"]["size"] == 32
    assert compose_plain(["model=digits_cnn", "data.size=32"])["data"]["size"] == 32


def test_values_are_overridden() -> None:
    plain = compose_plain(["pipeline.stages.prune.ratio=0.6", "target.batch_sizes=[1,32]", "seed=3", "cache=false"])
    assert plain["pipeline"]["stages"]["prune"]["ratio"] == 0.6
    magnitude = compose_plain(["pipeline=magnitude", "pipeline.stages.prune.sparsity=0.7"])
    assert magnitude["pipeline"]["stages"]["prune"]["sparsity"] == 0.7
    assert plain["target"]["batch_sizes"] == [1, 32]
    assert plain["seed"] == 3 and plain["cache"] is False


# -- errors ---------------------------------------------------------------------------------------


def test_wrong_type_fails_at_compose() -> None:
    message = one_line_config_error(["seed=abc"])
    assert message == "seed=abc is not a whole number; give seed=<a whole number> (see `slimkit --help`)"
    message = one_line_config_error(["pipeline=magnitude", "pipeline.stages.prune.sparsity=abc"])
    assert message.startswith("pipeline.stages.prune.sparsity=abc is not a number; give")
    assert "Float" not in message and "Error merging" not in message  # no OmegaConf wording
    message = one_line_config_error(["target.repeats=many"])
    assert "target.repeats=many" in message


def test_unknown_key_fails_at_compose() -> None:
    message = one_line_config_error(["pipeline.stages.prune.sparsty=0.5"])
    assert message.startswith("unknown config key 'pipeline.stages.prune.sparsty'")
    assert "sparsty" in message
    assert one_line_config_error(["foo=1"]).startswith("unknown config key 'foo'")
    assert "target.repeat" in one_line_config_error(["target.repeat=3"])


def test_unknown_option_lists_the_options() -> None:
    message = one_line_config_error(["pipeline=nope"])
    assert "pipeline/nope" in message
    assert f"available options for pipeline: {', '.join(options('pipeline'))}" in message
    assert "magnitude_prune" in one_line_config_error(["technique@pipeline.stages.prune=nope"])


def test_build_spec_checks_ranges(registry, tmp_path: Path) -> None:
    plain = compose_plain(["pipeline=magnitude", "pipeline.stages.prune.sparsity=1.5"])  # a float: composes
    with pytest.raises(ConfigError) as exc:
        build_spec(plain, registry, tmp_path)
    assert str(exc.value) == "pipeline.stages.prune.sparsity=1.5 is outside [0.0, 1.0); use e.g. 0.5"
    plain = compose_plain(["pipeline.stages.prune.steps=0"])
    with pytest.raises(ConfigError, match=r"^pipeline\.stages\.prune\.steps=0 must be >= 1"):
        build_spec(plain, registry, tmp_path)
    plain = compose_plain(
        ["pipeline=magnitude", "technique@pipeline.stages.prune=finetune", "pipeline.stages.prune.optimizer=lion"]
    )
    with pytest.raises(ConfigError, match=r"^pipeline\.stages\.prune\.optimizer='lion' is not one of"):
        build_spec(plain, registry, tmp_path)


def test_build_spec_rejects_an_unknown_stage_option(registry, tmp_path: Path) -> None:
    plain = compose_plain(["pipeline=magnitude"])
    plain["pipeline"]["stages"]["prune"]["amount"] = 0.3
    with pytest.raises(ConfigError) as exc:
        build_spec(plain, registry, tmp_path)
    message = str(exc.value)
    assert message.startswith("pipeline.stages.prune: magnitude_prune has no option amount; its options: ")
    for option in ("sparsity", "scope", "steps", "schedule", "finetune_epochs", "ignored_layers"):
        assert option in message
    assert "technique," not in message  # technique is not an option to set by hand


def test_build_spec_rejects_a_stage_without_technique(registry, tmp_path: Path) -> None:
    plain = compose_plain([])
    plain["pipeline"]["stages"]["prune"].pop("technique")
    with pytest.raises(ConfigError, match="stage 'prune' names no technique; set pipeline.stages.prune.technique"):
        build_spec(plain, registry, tmp_path)


def test_build_spec_rejects_unknown_plugins(registry, tmp_path: Path) -> None:
    plain = compose_plain([])
    plain["pipeline"]["stages"]["prune"]["technique"] = "no_such_prune"
    with pytest.raises(PluginError, match="unknown technique 'no_such_prune'; available: .*magnitude_prune"):
        build_spec(plain, registry, tmp_path)
    plain = compose_plain([])
    plain["target"]["name"] = "no_such_device"
    with pytest.raises(PluginError, match="unknown target 'no_such_device'; available: .*cpu"):
        build_spec(plain, registry, tmp_path)
    plain = compose_plain([])
    del plain["model"]
    with pytest.raises(ConfigError, match="no model is configured; pick one with model=OPTION"):
        build_spec(plain, registry, tmp_path)


def test_model_without_input_size_gives_data_size_32_or_the_explicit_one() -> None:
    assert compose_plain(["model=torch"])["data"]["size"] == 32
    plain = compose_plain(["model=torch", "data.size=8"])
    assert plain["model"]["name"] == "torch"
    assert plain["data"]["size"] == 8
