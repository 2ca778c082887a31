"""Tests of training (slimkit.plugins.torch.train) and of the shipped weights of the bundled models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.core import DataSplits, ModelError
from slimkit.plugins.data.digits import load_digits_splits
from slimkit.plugins.torch import zoo
from slimkit.plugins.torch.train import FitConfig, accuracy, fit, logits_of, train_bundled


@pytest.fixture(scope="module")
def digits8() -> DataSplits:
    return load_digits_splits(size=8)


@pytest.fixture(scope="module")
def digits32() -> DataSplits:
    return load_digits_splits(size=32)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def trained(data: DataSplits, seed: int, **cfg) -> tuple[nn.Module, object]:
    model = mlp()
    history = fit(model, data, FitConfig(**{"epochs": 1, "batch_size": 32, **cfg}), seed)
    return model, history


def test_fit_is_deterministic() -> None:
    data = load_digits_splits(size=8, limit=400)
    a, hist_a = trained(data, seed=5)
    torch.manual_seed(123)  # global RNG state must not matter: fit seeds itself
    b, hist_b = trained(data, seed=5)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert hist_a.loss == hist_b.loss and hist_a.val_accuracy == hist_b.val_accuracy
    c, _ = trained(data, seed=6)
    assert not torch.equal(sa["1.weight"], c.state_dict()["1.weight"])


def test_fit_with_augmentation_is_deterministic() -> None:
    data = load_digits_splits(size=8, limit=200)
    a, _ = trained(data, seed=1, augment=True, optimizer="adam", lr=1e-3)
    b, _ = trained(data, seed=1, augment=True, optimizer="adam", lr=1e-3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_fit_learns_and_reports(digits8: DataSplits) -> None:
    before = accuracy(mlp(), digits8.val)
    progress: list[tuple[str, float, float | None]] = []
    model = mlp()
    history = fit(model, digits8, FitConfig(epochs=2, lr=0.05), 0, progress=lambda *a: progress.append(a), task="train")
    assert len(history.loss) == 2 and len(history.val_accuracy) == 2
    assert history.loss[1] < history.loss[0]
    assert history.val_accuracy[-1] == accuracy(model, digits8.val)
    assert history.val_accuracy[-1] > max(before, 0.5)  # chance is 0.1
    assert not model.training
    steps = 2 * ((len(digits8.train) + 63) // 64)
    assert progress[-1] == ("train", steps, steps)
    assert all(task == "train" and 0 < done <= total for task, done, total in progress)


def test_fit_with_zero_epochs_does_nothing(digits8: DataSplits) -> None:
    model = mlp()
    history = fit(model, digits8, FitConfig(epochs=0), 0)
    assert history.loss == [] and history.val_accuracy == []
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), mlp().state_dict().values(), strict=True))


def test_logits_of() -> None:
    t = torch.ones(2, 3)
    assert logits_of(t) is t
    assert logits_of((t, "aux")) is t
    assert logits_of({"logits": t}) is t
    assert logits_of(type("Out", (), {"logits": t})()) is t
    with pytest.raises(TypeError, match="cannot find logits"):
        logits_of(3)


def test_shipped_digits_cnn_weights(digits8: DataSplits) -> None:
    model = zoo.digits_cnn()
    assert not model.training
    assert accuracy(model, digits8.test) >= 0.98


def test_shipped_digits_resnet_weights(digits32: DataSplits) -> None:
    model = zoo.digits_resnet()
    assert accuracy(model, digits32.test) >= 0.98


def test_bundled_table_matches_the_factories() -> None:
    assert set(zoo.BUNDLED) == {"digits_cnn", "digits_resnet"}
    for name, spec in zoo.BUNDLED.items():
        assert (zoo.WEIGHTS_DIR / f"{name}.pt").is_file()
        model = getattr(zoo, name)(pretrained=False, **spec["kwargs"])
        state = torch.load(zoo.WEIGHTS_DIR / f"{name}.pt", map_location="cpu", weights_only=True)
        assert state.keys() == model.state_dict().keys()


def test_no_bundled_weights_for_other_shapes() -> None:
    with pytest.raises(ModelError, match=r"no bundled weights for digits_resnet\(width=8, blocks=3\)"):
        zoo.digits_resnet(width=8)
    assert isinstance(zoo.digits_resnet(pretrained=False, width=8, blocks=1), nn.Module)


@pytest.mark.slow
def test_retraining_digits_cnn_with_its_recipe(tmp_path: Path, digits8: DataSplits) -> None:
    result = train_bundled("digits_cnn", tmp_path / "w.pt", quiet=True)
    assert result["test_accuracy"] >= 0.97
    model = zoo.DigitsCNN()
    model.load_state_dict(torch.load(tmp_path / "w.pt", map_location="cpu", weights_only=True))
    assert accuracy(model, digits8.test) == pytest.approx(result["test_accuracy"])
