"""Fast tests of the search plugin's parts: config checks, space -> stages, Pareto and pick, storage checks."""

from __future__ import annotations

import socket
import subprocess

import pytest
from search_testlib import TINY, run_cli, user_error

from slimkit.core import ConfigError, Report
from slimkit.plugins.search.config import DEFAULT_SPACE, SearchConfig
from slimkit.plugins.search.report import add_search_section, pareto_markdown
from slimkit.plugins.search.space import active_space, describe, resolve_exclude, trial_stages
from slimkit.plugins.search.study import (
    SearchError,
    check_storage,
    closest,
    enqueue_seeds,
    mask_url,
    pareto_front,
    pick_best,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n_trials": 0}, "search.n_trials=0"),
        ({"sampler": "grid"}, "search.sampler='grid'"),
        ({"objectives": ["speedup"]}, "two or more"),
        ({"objectives": ["accuracy_drop", "fps"]}, "search.objectives='fps'"),
        ({"max_accuracy_drop": -1.0}, "search.max_accuracy_drop=-1.0"),
        ({"min_speedup": 0.0}, "search.min_speedup=0.0"),
        ({"storage": "redis://x"}, "search.storage='redis://x'"),
        ({"study": "a b"}, "search.study='a b'"),
        ({"space": {"bits": [4]}}, "no parameter bits"),
        ({"space": {"sparsity": []}}, "search.space.sparsity=[]"),
        ({"heartbeat_s": 10, "grace_s": 5}, "grace_s > heartbeat_s"),
        ({"seed_pipelines": ["fast"]}, "+pipeline@search.seeds.fast=fast"),
        ({"seed_pipelines": ["x"], "seeds": {"x": {"name": "x"}}}, "search.seeds.x has no stages"),
    ],
)
def test_bad_config_is_one_line(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        SearchConfig(technique="search", **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_space_becomes_stages_in_order() -> None:
    cfg = SearchConfig(technique="search", epochs=2)
    resnet = {"factory": "slimkit.plugins.torch.zoo:digits_resnet", "kwargs": {"pretrained": True}}
    params = {
        "width_mult": 0.5,
        "depth": 2,
        "depthwise": True,
        "channel_ratio": 0.25,
        "rank_ratio": 0.5,
        "sparsity": 0.5,
        "n_clusters": 32,
        "quant_mode": "static",
        "weight_bits": 8,
        "exclude": "first,last",
    }
    stages = trial_stages(params, cfg, resnet, ["stem.0", "layers.0.conv1", "fc"])
    assert list(stages) == ["arch", "depthwise", "channels", "lowrank", "sparsity", "cluster", "quantize"]
    assert stages["arch"]["student"]["kwargs"] == {"pretrained": False, "width": 8, "blocks": 2}
    assert stages["channels"]["ratio"] == 0.25 and stages["channels"]["finetune_epochs"] == 2
    assert stages["quantize"]["exclude"] == ["stem.0", "fc"] and stages["quantize"]["mode"] == "static"
    assert describe(params) == "arch w0.5/d2 dw ch0.25 rank0.5 sp0.5 k32 static8-first,last"
    off = {k: v[0] for k, v in DEFAULT_SPACE.items()}
    assert trial_stages(off, cfg, resnet) == {} and describe(off) == "none"


def test_architecture_only_for_the_resnet_family() -> None:
    cfg = SearchConfig(technique="search")
    cnn = {"factory": "slimkit.plugins.torch.zoo:digits_cnn"}
    space = active_space(cfg, cnn)
    assert space["width_mult"] == [1.0] and space["depth"] == [0]
    assert trial_stages({"width_mult": 0.5, "depth": 1}, cfg, cnn) == {}
    assert resolve_exclude("last,layers.1.*", ["a", "b"]) == ["b", "layers.1.*"]


def _row(n: int, drop: float, speed: float, state: str = "COMPLETE", feasible: bool = True) -> dict:
    return {
        "trial": n,
        "state": state,
        "label": f"t{n}",
        "params": {},
        "accuracy_drop": drop,
        "speedup": speed,
        "latency_ms": 1.0 / speed,
        "size_mb": 1.0,
        "accuracy": 0.9,
        "feasible": feasible,
        "violations": {"max_accuracy_drop": drop - 1.0},
    }


def test_pareto_front_pick_and_closest() -> None:
    cfg = SearchConfig(technique="search", max_accuracy_drop=1.0)
    rows = [
        _row(0, 0.0, 1.0),
        _row(1, 0.5, 2.0),
        _row(2, 0.6, 1.5),  # dominated by 1
        _row(3, 3.0, 4.0, feasible=False),
        _row(4, 0.1, 9.0, state="FAIL"),
    ]
    front = pareto_front(rows, cfg.objectives)
    assert [r["trial"] for r in front] == [0, 1, 3]
    assert pick_best(rows, cfg)["trial"] == 1  # fastest feasible
    assert pick_best([rows[3]], cfg) is None
    assert closest([rows[3], _row(5, 2.0, 1.0, feasible=False)])["trial"] == 5


def test_report_has_pareto_in_json_and_markdown() -> None:
    report = Report(status="FINISHED")
    section = {
        "search": {"study": "s", "storage": "sqlite:///x.db", "sampler": "tpe", "trials": {"COMPLETE": 2}},
        "pareto": [_row(1, 0.5, 2.0)],
    }
    add_search_section(report, section)
    data = report.to_dict()
    assert data["pareto"][0]["trial"] == 1 and data["search"]["study"] == "s"
    assert "### Pareto front" in report.to_markdown()
    assert "| 1 | t1 | 90.00 % | 0.50 pt | 2.00x" in pareto_markdown(section)


def test_unreachable_storage_names_the_url() -> None:
    url = f"postgresql://user:secret@127.0.0.1:{_closed_port()}/optuna"
    with pytest.raises(SearchError) as info:
        check_storage(url, timeout=2.0)
    message = str(info.value)
    assert "cannot reach the study storage postgresql://user:***@127.0.0.1:" in message
    assert "secret" not in message and "\n" not in message
    assert mask_url(url).startswith("postgresql://user:***@")
    with pytest.raises(ConfigError, match="in-memory"):
        check_storage("sqlite://")


def test_compose_and_unknown_search_key(tmp_path) -> None:
    from slimkit.pipelines.config import compose, to_plain

    plain = to_plain(compose(["pipeline=search", "search.n_trials=3", "search.space.sparsity=[0.0,0.5]"]))
    stage = plain["pipeline"]["stages"]["search"]
    assert stage["technique"] == "search" and stage["n_trials"] == 3 and stage["space"]["sparsity"] == [0.0, 0.5]
    proc = run_cli([*TINY, "search.nope=1"], tmp_path, timeout=120)
    user_error(proc, "search.nope")
    assert isinstance(proc, subprocess.CompletedProcess)


def test_hand_made_pipelines_are_the_default_seeds_and_queue_once() -> None:
    import optuna

    from slimkit.pipelines.config import compose, to_plain

    plain = to_plain(compose(["pipeline=search", "target.threads=3"]))["search"]
    assert plain["seed_pipelines"] == ["default", "structured", "quantize"]
    default = plain["seeds"]["default"]["stages"]
    assert [s["technique"] for s in default.values()] == ["channel_prune", "distill", "quantize"]
    assert default["prune"]["ratio"] == 0.5 and default["quantize"]["threads"] == 3  # verbatim, interpolated
    cfg = SearchConfig(technique="search", seed_pipelines=plain["seed_pipelines"], seeds=plain["seeds"])
    study = optuna.create_study(directions=["minimize", "maximize"])
    assert enqueue_seeds(study, cfg) == ["default", "structured", "quantize"]
    assert enqueue_seeds(study, cfg) == []  # a re-run (or a second worker) does not queue them again
    queued = [t.user_attrs["seed_pipeline"] for t in study.get_trials(deepcopy=False)]
    assert queued == ["default", "structured", "quantize"]
    none = to_plain(compose(["pipeline=search", "search.seed_pipelines=[]"]))["search"]
    assert none["seed_pipelines"] == [] and enqueue_seeds(optuna.create_study(), SearchConfig(technique="search")) == []


def test_onnx_models_search_only_what_handles_onnx() -> None:
    import optuna

    from slimkit.core.plugins import get_registry
    from slimkit.pipelines.config import compose, to_plain

    registry = get_registry()

    def onnx_ok(technique: str) -> bool:
        return "onnx" in registry.technique(technique).frameworks

    space = active_space(
        SearchConfig(technique="search"), {"factory": "slimkit.plugins.torch.zoo:digits_resnet"}, onnx_ok
    )
    # no distillation (architecture), depthwise swap or channel pruning on an ONNX file
    assert space["width_mult"] == [1.0] and space["depth"] == [0] and space["depthwise"] == [False]
    assert space["channel_ratio"] == [0.0]
    for name in ("sparsity", "n_clusters", "rank_ratio", "quant_mode"):
        assert space[name] == DEFAULT_SPACE[name], name
    plain = to_plain(compose(["pipeline=search"]))["search"]
    cfg = SearchConfig(technique="search", seed_pipelines=plain["seed_pipelines"], seeds=plain["seeds"])
    study = optuna.create_study(directions=["minimize", "maximize"])
    assert enqueue_seeds(study, cfg, onnx_ok) == ["quantize"]  # default and structured prune channels (torch)
