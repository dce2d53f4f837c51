"""The worked examples: the digits images factory and the hand-written training loop."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from orchestrator.config.models import get
from orchestrator.examples.custom_loop import fit
from orchestrator.examples.digits import images
from orchestrator.train.data import prepare


@pytest.mark.parametrize(("seed", "val_fraction", "test_fraction"), [(0, 0.2, 0.2), (7, 0.15, 0.25), (3, 0.3, 0.0)])
def test_digits_images_split_like_the_table(seed, val_fraction, test_fraction):
    """The same seed and fractions pick the same digits, in the same order, as the tabular digits."""
    table = prepare(load_digits(as_frame=True).frame, "target", "classification", val_fraction, test_fraction,
                    "none", seed)
    splits = images(seed, val_fraction, test_fraction)
    expected = {"train": (table.x_train, table.y_train), "val": (table.x_val, table.y_val)}
    if test_fraction:
        expected["test"] = (table.x_test, table.y_test)
    assert set(splits) == set(expected)
    for name, (x_table, y_table) in expected.items():
        x, y = splits[name]
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == (1, 8, 8)
        assert x.min() >= 0 and x.max() <= 1
        np.testing.assert_array_equal(y.numpy(), y_table)
        np.testing.assert_array_equal(x.numpy().reshape(len(x), 64) * 16, x_table)  # scale "none": raw pixels


def test_digits_images_differ_by_seed():
    assert not torch.equal(images(0)["val"][1], images(1)["val"][1])


@pytest.mark.parametrize("fractions", [(0.0, 0.2), (0.6, 0.4), (0.2, -0.1)])
def test_digits_images_bad_fractions(fractions):
    with pytest.raises(ValueError, match="val_fraction"):
        images(0, *fractions)


class FakeContext:
    """The trial context the loop is written against, on the digits images, recording reports."""

    def __init__(self, config: dict, max_epochs: int, restore: dict | None = None, stop_after: int | None = None):
        self.config, self.max_epochs, self.device = config, max_epochs, torch.device("cpu")
        splits = images(0)
        self.data = SimpleNamespace(**{k: torch.utils.data.TensorDataset(*v) for k, v in splits.items()})
        self._restore, self._stop_after = restore, stop_after
        self.reports: list[tuple[int, dict, dict]] = []

    def build_model(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return get("cnn")(input_shape=(1, 8, 8), n_outputs=10, channels=8)

    def loader(self, split: str, batch_size: int | None = None, shuffle: bool | None = None):
        shuffle = split == "train" if shuffle is None else shuffle
        return torch.utils.data.DataLoader(getattr(self.data, split), shuffle=shuffle,
                                           batch_size=batch_size or self.config["batch_size"],
                                           generator=torch.Generator().manual_seed(0))

    def restore(self) -> dict | None:
        return self._restore

    def report(self, epoch: int, metrics: dict, state=None, test=None, model=None) -> None:
        self.reports.append((epoch, metrics, state() if callable(state) else state))

    @property
    def should_stop(self) -> bool:
        return self._stop_after is not None and len(self.reports) >= self._stop_after


CONFIG = {"lr": 3e-3, "batch_size": 64, "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}


def test_custom_loop_trains_reports_and_resumes():
    ctx = FakeContext(CONFIG, max_epochs=3)
    fit(dict(CONFIG), ctx)
    assert [epoch for epoch, _, _ in ctx.reports] == [1, 2, 3]
    first, last = ctx.reports[0][1], ctx.reports[-1][1]
    assert set(last) == {"train_loss", "val_loss", "val_accuracy"}
    assert last["val_loss"] < first["val_loss"] and last["val_accuracy"] > 0.8
    state = ctx.reports[1][2]
    assert state["epoch"] == 2 and set(state) == {"model", "optimizer", "epoch"}

    # Resumed from epoch 2 with new hyperparameters (a PBT exploit): epoch 3 onwards, the new lr applied.
    new = {**CONFIG, "lr": 1e-4, "beta1": 0.8}
    resumed = FakeContext(new, max_epochs=4, restore=state)
    fit(new, resumed)
    assert [epoch for epoch, _, _ in resumed.reports] == [3, 4]
    group = resumed.reports[-1][2]["optimizer"]["param_groups"][0]
    assert group["lr"] == 1e-4 and tuple(group["betas"]) == (0.8, 0.999)
    assert resumed.reports[0][1]["val_accuracy"] > 0.8  # the weights came back, not a fresh model


def test_custom_loop_stops_when_told():
    ctx = FakeContext(CONFIG, max_epochs=10, stop_after=2)
    fit(dict(CONFIG), ctx)
    assert [epoch for epoch, _, _ in ctx.reports] == [1, 2]
