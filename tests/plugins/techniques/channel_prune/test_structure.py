"""``channel_prune`` chooses its algorithm by the model's structure, not by the library that built it:
transformers' CNNs (ResNet, MobileNetV2, ConvNeXt) go through Torch-Pruning's dependency graph, ViT and
DistilBERT lose attention heads and FFN neurons, an attention it does not know is left alone (issue #19)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from slimkit.core import DataSplits, ModelError, Split
from slimkit.pipelines.testing import IN_PROCESS_TIMING, read_report, run_cli, single_run_dir
from slimkit.plugins.techniques.channel_prune import ChannelPrune, ChannelPruneConfig
from slimkit.plugins.techniques.channel_prune.transformer import encoder_layers, is_transformer

pytest.importorskip("transformers")
import channel_prune_models as models  # noqa: E402  (conftest.py puts its folder on sys.path)

HERE = Path(__file__).parent


def prune(model, adapter, ctx, **params):
    params.setdefault("finetune_epochs", 0)
    params.setdefault("round_to", 1)
    return ChannelPrune(ChannelPruneConfig(technique="channel_prune", **params)).apply(model, adapter, ctx)


def check_pruned(adapter, before, pruned, data, tmp_path: Path, export_batch: int = 1) -> None:
    """Fewer parameters, the same output shape, finite outputs, and an ONNX export that computes the same."""
    import onnxruntime as ort

    batch = data.test.example(4)
    assert adapter.count_params(pruned).total < 0.9 * before
    out = adapter.predict(pruned, batch)
    assert out.shape == (4, data.num_classes) and np.isfinite(out).all()
    path = tmp_path / "pruned.onnx"
    adapter.export_onnx(pruned, path, data.test.example(export_batch))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, batch)[0], out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("factory", ["resnet", "mobilenet_v2"])
def test_transformers_cnns_lose_channels_through_the_dependency_graph(factory, adapter, digits8, make_ctx, tmp_path):
    model = getattr(models, factory)()
    before = adapter.count_params(model).total
    assert not is_transformer(model)  # a transformers PreTrainedModel, but no encoder layers
    ctx = make_ctx(digits8)
    pruned = prune(model, adapter, ctx, ratio=0.5)
    assert ctx.info["kept_output_layers"] in (["classifier"], ["classifier.1"])
    assert ctx.metrics["channels_kept"] < 0.7 and ctx.metrics["macs_ratio"] > 1.5
    check_pruned(adapter, before, pruned, digits8, tmp_path)


def test_convnext_layer_norm_depthwise_convs_and_layer_scale_stay_consistent(adapter, digits8, make_ctx, tmp_path):
    """ConvNeXt's layer scale is a loose parameter: Torch-Pruning prunes it along its channels (recorded),
    with the depthwise convolution and the channels-first LayerNorm of each block."""
    model = models.convnext()
    before = adapter.count_params(model).total
    ctx = make_ctx(digits8)
    pruned = prune(model, adapter, ctx, ratio=0.5)
    assert ctx.info["unwrapped_parameters"] == [
        f"convnext.encoder.stages.{i}.layers.0.layer_scale_parameter (dim 0)" for i in (0, 1)
    ]
    for stage in pruned.convnext.encoder.stages:
        block = stage.layers[0]
        width = block.dwconv.out_channels
        assert block.dwconv.groups == width == block.layernorm.weight.numel() == block.pwconv2.out_features
        assert block.layer_scale_parameter.numel() == width
    assert pruned.convnext.encoder.stages[1].layers[0].dwconv.out_channels < 32
    # torch.export cannot trace this ConvNeXt with a dynamic batch from a batch-1 example (unpruned too)
    check_pruned(adapter, before, pruned, digits8, tmp_path, export_batch=2)


def test_vit_loses_heads_and_ffn_neurons(adapter, digits8, make_ctx, tmp_path):
    model = models.vit()
    before = adapter.count_params(model).total
    assert [n for n, _ in encoder_layers(model)] == ["vit.layers.0", "vit.layers.1"]
    ctx = make_ctx(digits8)
    pruned = prune(model, adapter, ctx, ratio=0.5)
    assert ctx.info["layers"]["vit.layers.1"] == {
        "heads_before": 4,
        "heads_after": 2,
        "ffn_before": 32,
        "ffn_after": 16,
    }
    attention = pruned.vit.layers[0].attention
    assert attention.num_attention_heads == 2 and attention.q_proj.out_features == attention.o_proj.in_features == 8
    assert pruned.config.intermediate_size == 16
    check_pruned(adapter, before, pruned, digits8, tmp_path)


def test_distilbert_loses_heads_and_ffn_neurons(adapter, tokens, make_ctx, tmp_path):
    model = models.distilbert()
    before = adapter.count_params(model).total
    ctx = make_ctx(tokens)
    pruned = prune(
        model, adapter, ctx, ratio=0.5, head_ratio=0.25, ignored_layers=["distilbert.transformer.layer.1.ffn"]
    )
    layers = ctx.info["layers"]
    assert layers["distilbert.transformer.layer.0"] == {
        "heads_before": 4,
        "heads_after": 3,
        "ffn_before": 64,
        "ffn_after": 32,
    }
    assert layers["distilbert.transformer.layer.1"]["ffn_after"] == 64  # ignored
    assert pruned.distilbert.transformer.layer[0].attention.n_heads == 3
    assert pruned.config.hidden_dim == 64  # the FFN widths differ: the config keeps its value
    check_pruned(adapter, before, pruned, tokens, tmp_path)


def float64(data: DataSplits) -> DataSplits:
    def split(s: Split) -> Split:
        return Split({k: v.astype(np.float64) for k, v in s.inputs.items()}, s.labels)

    return DataSplits(data.name, split(data.train), split(data.val), split(data.test), num_classes=data.num_classes)


def test_the_least_important_vit_head_goes_and_the_rest_compute_the_same(adapter, digits8, make_ctx):
    """A head whose query/key/value rows are zero contributes nothing: it is the one pruned, and the
    outputs stay the same (float64, exact up to rounding)."""
    model = models.vit().double()
    att = model.vit.layers[0].attention
    with torch.no_grad():
        for lin in (att.q_proj, att.k_proj, att.v_proj):
            lin.weight[4:8] = 0
            lin.bias[4:8] = 0
    data = float64(digits8)
    reference = adapter.predict(model, data.test.example(4))
    ctx = make_ctx(data)
    pruned = prune(model, adapter, ctx, ratio=0.0, head_ratio=0.25, ignored_layers=["vit.layers.1"])
    assert ctx.info["pruned_heads"] == {"vit.layers.0": [1], "vit.layers.1": []}
    np.testing.assert_allclose(adapter.predict(pruned, data.test.example(4)), reference, rtol=1e-9, atol=1e-12)


def test_an_attention_it_does_not_know_is_left_alone(adapter, digits8, make_ctx):
    """A fused-qkv attention holding a head count: its channel groups are skipped (the FFN is pruned); a model
    with nothing else to prune is refused in one line naming the attention."""
    ctx = make_ctx(digits8)
    pruned = prune(models.row_transformer(), adapter, ctx, ratio=0.5)
    assert ctx.info["left_alone"] == ["attention"]
    assert pruned.attention.qkv.out_features == 96 and pruned.ffn[0].out_features == 32
    assert adapter.predict(pruned, digits8.test.example(2)).shape == (2, 10)
    with pytest.raises(ModelError) as err:
        prune(models.row_transformer(ffn=False), adapter, make_ctx(digits8), ratio=0.5)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("channel_prune cannot prune this model") and "through attention," in message


def test_every_output_of_a_multi_output_cnn_keeps_its_layer(adapter, digits8, make_ctx):
    """The three heads of a face-detector-like CNN are outputs: none of them loses a channel; fine-tuning by
    distillation (every output against the unpruned model's) runs on the tuple of outputs."""
    model = models.three_heads()
    ctx = make_ctx(digits8, baseline=models.three_heads())
    pruned = prune(model, adapter, ctx, ratio=0.5, finetune_epochs=1)
    assert ctx.info["kept_output_layers"] == ["box", "face", "landmarks"]
    assert (pruned.box.out_features, pruned.landmarks.out_features, pruned.face.out_features) == (4, 10, 2)
    assert pruned.trunk[0].out_channels == 8
    assert "train_loss" in ctx.metrics and np.isfinite(ctx.metrics["train_loss"])


# -- through the CLI ------------------------------------------------------------------------------

FAST = [
    "tracking=none",
    "data.size=8",
    "target.repeats=3",
    "target.warmup=1",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
    "target.threads=1",
    *IN_PROCESS_TIMING,  # latency timed in the run's process, in one round: not what these check
    "pipeline.stages.prune.steps=1",
    "pipeline.stages.prune.finetune_epochs=0",
    "pipeline.stages.prune.round_to=1",
    "pipeline.stages.distill.epochs=1",
]


def cli(args: list[str], cwd: Path):
    """The CLI in ``cwd`` with this folder (the model factories) on PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return run_cli(args, cwd, env={"PYTHONPATH": path})


@pytest.mark.slow
@pytest.mark.parametrize(("factory", "kind"), [("resnet", "channels"), ("vit", "heads")])
def test_structured_pipeline_prunes_transformers_models_from_the_cli(factory, kind, tmp_path):
    done = cli(["pipeline=structured", "model=torch", f"model.factory=channel_prune_models:{factory}", *FAST], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = single_run_dir(tmp_path)
    report = read_report(run_dir)
    assert report["status"] == "FINISHED"
    assert report["compressed"]["params"] < 0.8 * report["baseline"]["params"]
    prune_info = report["stages"][0]["info"]
    assert ("pruned_heads" in prune_info) == (kind == "heads")
    import onnxruntime as ort

    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((3, 1, 8, 8), np.float32)})[0]
    assert out.shape == (3, 10)


@pytest.mark.slow
def test_a_factory_whose_class_cannot_be_pickled_is_a_one_line_model_error(tmp_path):
    done = cli(
        ["pipeline=structured", "model=torch", "model.factory=channel_prune_models:local_class", *FAST], tmp_path
    )
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert lines[-1].startswith(
        "slimkit: error: model.factory='channel_prune_models:local_class' gives a model of class"
    )
    assert (
        "local_class.<locals>.Local" in lines[-1] and "define the class" in lines[-1] and "at module level" in lines[-1]
    )


def test_the_unpicklable_factory_fails_when_loaded(adapter):
    """Before any work: the adapter refuses it on loading, and saving any such model is a ModelError too."""
    with pytest.raises(ModelError, match=r"local_class.<locals>.Local that cannot be saved .*at module level"):
        adapter.load({"factory": "channel_prune_models:local_class"})
    with pytest.raises(ModelError, match="cannot be saved"):
        adapter.save(models.local_class(), Path(os.devnull))
