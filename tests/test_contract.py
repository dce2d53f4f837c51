"""The trial contract (orchestrator/train/context.py) without Ray: what a training function's reports
become, and the rules a function that breaks the contract is told about."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from orchestrator.train.context import (
    ContractError,
    LocalBackend,
    TrialContext,
    TrialSetup,
    TrialStopped,
)


def setup_for(max_epochs: int = 5, report_epochs: frozenset[int] | None = None, **base: Any) -> TrialSetup:
    return TrialSetup(base={"seed": 0, "divergence_factor": 10.0, "patience": None, **base}, model="mlp",
                      metric="val_loss", mode="min", max_epochs=max_epochs, report_epochs=report_epochs,
                      checkpoint_every=2, trainable="tests:fit")


def context(setup: TrialSetup, state: dict | None = None, config: dict | None = None
            ) -> tuple[TrialContext, list[tuple[dict, dict | None]]]:
    sent: list[tuple[dict, dict | None]] = []
    ctx = TrialContext(config or {}, setup, None, LocalBackend(lambda r, c: sent.append((r, c)), state, "t1"),
                       torch.device("cpu"))
    return ctx, sent


def test_every_epoch_is_kept_and_the_scheduler_sees_only_its_epochs() -> None:
    ctx, sent = context(setup_for(max_epochs=4, report_epochs=frozenset({2})))
    calls = []

    def state() -> dict:
        calls.append(1)
        return {"w": torch.ones(2)}

    for epoch, loss in enumerate([1.0, 0.5, 0.7, 0.6], start=1):
        ctx.report(epoch, {"train_loss": loss, "val_loss": loss, "val_accuracy": 1 - loss}, state=state)
    assert ctx.should_stop
    assert [r["epoch"] for r, _ in sent] == [2, 4]  # the rung, then the last epoch
    assert [[h["epoch"] for h in r["history"]] for r, _ in sent] == [[1, 2], [3, 4]]
    first, last = sent[0][0], sent[1][0]
    assert not first["final"] and last["final"] and last["trial_status"] == "completed"
    assert last["best"] == {"train_loss": 0.5, "val_loss": 0.5, "val_accuracy": 0.5} and last["best_epoch"] == 2
    # A checkpoint only where one is due (epoch 2: checkpoint_every=2), none at the end.
    assert sent[0][1] is not None and sent[1][1] is None and len(calls) == 1
    assert sent[0][1]["user"]["w"].tolist() == [1.0, 1.0] and sent[0][1]["orch"]["epoch"] == 2
    with pytest.raises(TrialStopped):
        ctx.report(5, {"val_loss": 0.1})
    assert ctx.finish() is last


def test_restore_gives_back_the_state_and_the_epochs_go_on() -> None:
    ctx, sent = context(setup_for(max_epochs=6))
    for epoch in (1, 2):
        ctx.report(epoch, {"val_loss": 1.0 / epoch}, state={"step": epoch})
    checkpoint = sent[-1][1]
    assert checkpoint is not None
    resumed, sent2 = context(setup_for(max_epochs=6), state=checkpoint, config={"lr": 0.5})
    assert resumed.restore() == {"step": 2} and resumed.start_epoch == 3 and resumed.config["lr"] == 0.5
    with pytest.raises(ContractError, match=r"trial t1: ctx.report: epoch 1 after epoch 2"):
        resumed.report(1, {"val_loss": 0.1})
    resumed.report(3, {"val_loss": 0.9})
    assert sent2[-1][0]["best"]["val_loss"] == 0.5 and sent2[-1][0]["best_epoch"] == 2  # carried over


@pytest.mark.parametrize("metrics, message", [
    ({"train_loss": 0.1}, "epoch 1's metrics have no 'val_loss', the sweep's objective (reported: train_loss)"),
    ({"val_loss": "low"}, "metric 'val_loss' is a str, not a number"),
])
def test_a_report_that_breaks_the_contract_names_the_trial_and_the_rule(metrics: dict, message: str) -> None:
    ctx, _ = context(setup_for())
    with pytest.raises(ContractError) as err:
        ctx.report(1, metrics)
    assert str(err.value) == f"trial t1: ctx.report: {message}"


def test_returning_without_a_report_is_an_error_and_stopping_early_is_recorded() -> None:
    ctx, _ = context(setup_for())
    with pytest.raises(ContractError, match="trial t1: tests:fit returned without reporting an epoch"):
        ctx.finish()
    ctx, sent = context(setup_for(max_epochs=5))
    ctx.report(1, {"val_loss": 0.3})
    result = ctx.finish()
    assert result["final"] and result["trial_status"] == "stopped_early"
    assert result["stop_reason"] == "the training function returned after epoch 1 of 5" and sent[-1][0] is result


def test_divergence_and_patience_come_from_the_reported_losses() -> None:
    ctx, sent = context(setup_for(max_epochs=9))
    ctx.report(1, {"train_loss": 1.0, "val_loss": 1.0})
    ctx.report(2, {"train_loss": 12.0, "val_loss": 2.0})
    assert ctx.should_stop and sent[-1][0]["trial_status"] == "diverged"
    assert "training loss 12 at epoch 2 is over 10x its first value 1" in sent[-1][0]["stop_reason"]
    assert sent[-1][0]["val_loss"] == math.inf  # the worst value, for the scheduler
    ctx, sent = context(setup_for(max_epochs=9))
    ctx.report(1, {"val_loss": math.nan})
    assert sent[-1][0]["trial_status"] == "diverged" and "non-finite loss at epoch 1" in sent[-1][0]["stop_reason"]
    ctx, sent = context(setup_for(max_epochs=9, patience=2))
    for epoch, v in enumerate([0.5, 0.6, 0.7], start=1):
        ctx.report(epoch, {"val_loss": v})
    assert sent[-1][0]["trial_status"] == "stopped_early" and sent[-1][0]["epoch"] == 3


def test_test_scores_and_weights_are_the_best_epochs_and_a_state_must_be_plain() -> None:
    ctx, sent = context(setup_for(max_epochs=4, report_epochs=frozenset({2, 3})))
    computed = []
    model = torch.nn.Linear(2, 1)

    def test() -> dict:
        computed.append(1)
        return {"test_loss": 0.25 * len(computed)}

    ctx.report(1, {"val_loss": 0.5, "test_accuracy": 0.9}, test=test, model=model)
    assert computed == [1]  # a best epoch: its scores are kept (not reported yet)
    with torch.no_grad():
        model.weight.fill_(7.0)
    ctx.report(2, {"val_loss": 0.4, "test_accuracy": 0.91}, test=test, model=model)
    assert computed == [1, 1] and sent[-1][0]["test"] == {"test_accuracy": 0.91, "test_loss": 0.5}
    assert "test_accuracy" not in sent[-1][0]["history"][0]
    with torch.no_grad():
        model.weight.fill_(-1.0)
    ctx.report(3, {"val_loss": 0.4, "test_accuracy": 0.5}, test=test, model=model)  # a tie: not better
    assert computed == [1, 1] and sent[-1][0]["test"]["test_accuracy"] == 0.91
    assert sent[-1][0]["best_epoch"] == 2 and bool((ctx.best_weights["weight"] == 7.0).all())
    assert ctx.n_params == 3

    class Opaque:
        pass

    ctx, _ = context(setup_for(max_epochs=3))
    with pytest.raises(ContractError, match="state: a checkpoint holds only tensors and plain values, not Opaque"):
        ctx.report(1, {"val_loss": 0.5}, state={"thing": Opaque()})


def test_the_model_check_runs_the_datas_own_samples_integer_token_ids_included() -> None:
    from torch import nn

    from orchestrator.config import models
    from orchestrator.errors import ConfigError

    class Bag(nn.Module):
        def __init__(self, vocab: int, n_outputs: int) -> None:
            super().__init__()
            self.embed, self.out = nn.Embedding(vocab, 4), nn.Linear(4, n_outputs)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.out(self.embed(tokens).mean(1))

    import sys
    import types

    module = types.ModuleType("bag_of_tokens")
    module.build = lambda n_outputs, vocab=50: Bag(vocab, n_outputs)  # type: ignore[attr-defined]
    module.three = lambda n_outputs: Bag(50, 3)  # type: ignore[attr-defined]  # (ignores n_outputs)
    sys.modules["bag_of_tokens"] = module
    try:
        tokens = torch.randint(0, 50, (2, 7))
        models.check_built("bag_of_tokens:build", (7,), 3, "classification", {}, example=[tokens])
        with pytest.raises(ConfigError, match=r"output for a batch of 2 samples of shape \(7,\) is \(2, 3\), "
                                              r"expected \(2, 5\)"):
            models.check_built("bag_of_tokens:three", (7,), 5, "classification", {}, example=[tokens])
    finally:
        del sys.modules["bag_of_tokens"]


def test_population_based_training_needs_a_state_at_each_checkpoint() -> None:
    import dataclasses

    ctx, _ = context(dataclasses.replace(setup_for(max_epochs=6, report_epochs=frozenset({2, 4})), needs_state=True))
    ctx.report(1, {"val_loss": 0.5})  # not a checkpoint epoch (checkpoint_every=2)
    with pytest.raises(ContractError, match="trial t1: ctx.report: epoch 2 has no state: population-based training"):
        ctx.report(2, {"val_loss": 0.4})


def test_a_function_that_returns_early_hands_over_its_best_epochs_test_scores_and_weights(tmp_path) -> None:
    setup = dataclasses.replace(setup_for(max_epochs=10, report_epochs=frozenset({5})), weights_dir=str(tmp_path))
    ctx, sent = context(setup)
    model = torch.nn.Linear(2, 1)
    for epoch, loss in ((1, 0.5), (2, 0.3), (3, 0.4)):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        ctx.report(epoch, {"train_loss": loss, "val_loss": loss}, test={"test_loss": loss + 1}, model=model)
    result = ctx.finish()  # it stopped on its own after epoch 3: its best was epoch 2
    assert result["test"] == {"test_loss": 1.3} and result["best_epoch"] == 2
    saved = torch.load(tmp_path / "t1.pt", weights_only=True)
    assert saved["epoch"] == 2 and bool((saved["weights"]["weight"] == 2.0).all())


def test_a_diverging_epoch_is_never_the_best() -> None:
    ctx, sent = context(setup_for(max_epochs=5))
    model = torch.nn.Linear(2, 1)
    ctx.report(1, {"train_loss": 1.0, "val_loss": 0.9}, test={"test_loss": 0.8}, model=model)
    ctx.report(2, {"train_loss": 50.0, "val_loss": 0.1}, test={"test_loss": 0.05}, model=model)  # blew up
    assert sent[-1][0]["trial_status"] == "diverged"
    assert sent[-1][0]["best_epoch"] == 1 and sent[-1][0]["best"]["val_loss"] == 0.9
    assert "test" not in sent[-1][0]
