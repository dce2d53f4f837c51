"""The trainer's knobs, one test each, checked on what they build (modules, optimiser groups, learning
rates, losses, data), plus the training loop's diagnostics: divergence, collapse, early stopping,
determinism. Every knob is also shown to work as a search-space knob."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from orchestrator.models.mlp import mlp
from sklearn import datasets
from torch import nn

from orchestrator.config import load as config
from orchestrator.config import schema
from orchestrator.space import space as spaces
from orchestrator.train import data, optim
from orchestrator.train.losses import class_weights, evaluate, resolve_loss
from orchestrator.train.trainer import TrialSetup, build, hyperparameters, run_trial
from orchestrator.tune import plan
from tests.conftest import CONFIG


def _frame(loader):
    return loader(as_frame=True).frame


@pytest.fixture(scope="module")
def iris() -> data.Dataset:
    return data.prepare(_frame(datasets.load_iris), "target", "classification", seed=0)


@pytest.fixture(scope="module")
def binary() -> data.Dataset:
    return data.prepare(_frame(datasets.load_breast_cancer), "target", "classification", seed=0)


@pytest.fixture(scope="module")
def diabetes() -> data.Dataset:
    return data.prepare(_frame(datasets.load_diabetes), "target", "regression", seed=0)


@pytest.fixture(scope="module")
def cfg() -> config.SweepConfig:
    return plan.load(CONFIG)


def base_hp(cfg, **over) -> dict:
    return {**schema.base_hyperparameters(cfg), **over}


def parts(cfg, dataset, **over):
    torch.manual_seed(0)
    return build(base_hp(cfg, **over), dataset, "mlp", 10)


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def setup_for(cfg, max_epochs=5, **over) -> TrialSetup:
    return TrialSetup(base=base_hp(cfg, **over), model="mlp", metric="val_loss", mode="min",
                      max_epochs=max_epochs, report_epochs=None, checkpoint_every=100)


def train(cfg, dataset, max_epochs=5, **over) -> tuple[dict, list[dict]]:
    history: list[dict] = []

    def report(result, ckpt):
        history.extend(result["history"])

    result = run_trial({}, dataset, setup_for(cfg, max_epochs, **over), report)
    return result, history


# -- model -------------------------------------------------------------------------------------------


def test_hidden_and_layers_set_depth_and_width() -> None:
    model = mlp(5, 3, hidden=32, layers=3)
    assert [(m.in_features, m.out_features) for m in linears(model)] == [(5, 32), (32, 32), (32, 32), (32, 3)]


def test_shrink_builds_a_funnel() -> None:
    assert [m.out_features for m in linears(mlp(5, 3, hidden=128, layers=3, shrink=0.5))] == [128, 64, 32, 3]


def test_widths_list_wins_over_hidden_and_layers() -> None:
    model = mlp(5, 2, hidden=999, layers=7, widths=[64, 16])
    assert [(m.in_features, m.out_features) for m in linears(model)] == [(5, 64), (64, 16), (16, 2)]


def test_dropout_follows_every_hidden_layer() -> None:
    drops = [m for m in mlp(5, 2, layers=3, dropout=0.3).modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(d.p == pytest.approx(0.3) for d in drops)
    # At 0 the modules stay (as identities), so the layer keys of a checkpoint do not depend on it.
    off = mlp(5, 2, layers=3, dropout=0.0)
    assert [m.p for m in off.modules() if isinstance(m, nn.Dropout)] == [0.0, 0.0, 0.0]
    assert list(off.state_dict()) == list(mlp(5, 2, layers=3, dropout=0.4).state_dict())


@pytest.mark.parametrize("name, cls", [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("gelu", nn.GELU),
                                       ("elu", nn.ELU), ("tanh", nn.Tanh)])
def test_activation(name, cls) -> None:
    acts = [m for m in mlp(5, 2, layers=2, activation=name).modules() if isinstance(m, cls)]
    assert len(acts) == 2


def test_batch_norm_sits_before_the_activation_and_drops_the_bias() -> None:
    model = mlp(5, 2, layers=2, batch_norm=True)
    kinds = [type(m) for m in model]
    assert kinds[:3] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert all(m.bias is None for m in linears(model)[:-1]) and linears(model)[-1].bias is not None
    assert all(m.bias is not None for m in linears(mlp(5, 2, layers=2, batch_norm=False)))


def _std(layer: nn.Linear) -> float:
    return float(layer.weight.detach().std())


def test_init_auto_is_he_for_relu_and_xavier_for_tanh() -> None:
    torch.manual_seed(0)
    fan_in = 400
    relu = linears(mlp(fan_in, 2, hidden=400, layers=1, activation="relu"))[0]
    assert _std(relu) == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.05)  # He: var 2 / fan_in
    tanh = linears(mlp(fan_in, 2, hidden=400, layers=1, activation="tanh"))[0]
    # Xavier uniform with tanh's gain 5/3: var = gain^2 * 2 / (fan_in + fan_out)
    assert _std(tanh) == pytest.approx(5 / 3 * math.sqrt(2.0 / 800), rel=0.05)


def test_init_choices() -> None:
    torch.manual_seed(0)
    xavier = linears(mlp(400, 2, hidden=400, layers=1, init="xavier"))[0]
    assert _std(xavier) == pytest.approx(math.sqrt(2.0 / 800), rel=0.05)
    kaiming = linears(mlp(400, 2, hidden=400, layers=1, activation="tanh", init="kaiming"))[0]
    assert _std(kaiming) == pytest.approx(math.sqrt(2.0 / 400), rel=0.05)
    orth = linears(mlp(64, 2, hidden=32, layers=1, init="orthogonal"))[0].weight.detach()
    gain = math.sqrt(2.0)
    assert torch.allclose(orth @ orth.T, gain**2 * torch.eye(32), atol=1e-4)


def test_bias_init() -> None:
    model = mlp(5, 2, layers=2, bias_init=0.1)
    hidden = linears(model)[:-1]
    assert all(torch.all(m.bias == 0.1) for m in hidden)
    assert torch.all(linears(model)[-1].bias == 0)  # the head starts neutral


@pytest.mark.parametrize("kwargs, word", [({"activation": "swish"}, "activation"), ({"init": "he"}, "init"),
                                          ({"shrink": 0.0}, "shrink"), ({"widths": [64, 0]}, "widths"),
                                          ({"dropout": 1.0}, "dropout")])
def test_bad_model_values_are_rejected(kwargs, word) -> None:
    with pytest.raises(ValueError, match=word):
        mlp(5, 2, **kwargs)


# -- optimiser ---------------------------------------------------------------------------------------


def test_sgd_momentum_nesterov_weight_decay(cfg, iris) -> None:
    opt = parts(cfg, iris, optimizer="sgd", lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3).optimizer
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.05, 0.8, True, 1e-3)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_family_betas_eps(cfg, iris, name, cls) -> None:
    opt = parts(cfg, iris, optimizer=name, beta1=0.85, beta2=0.995, eps=1e-7, weight_decay=0.01).optimizer
    g = opt.param_groups[0]
    assert type(opt) is cls
    assert g["betas"] == (0.85, 0.995) and g["eps"] == 1e-7 and g["weight_decay"] == 0.01


def test_restored_optimizer_takes_new_hyperparameters(cfg, iris) -> None:
    old = parts(cfg, iris, optimizer="sgd", lr=0.1, momentum=0.9)
    new = parts(cfg, iris, optimizer="sgd", lr=0.01, momentum=0.5)
    new.optimizer.load_state_dict(old.optimizer.state_dict())
    assert new.optimizer.param_groups[0]["lr"] == 0.1  # load_state_dict brings the old values back ...
    optim.apply_hyperparameters(new.optimizer, new.hp)
    assert new.optimizer.param_groups[0]["lr"] == 0.01 and new.optimizer.param_groups[0]["momentum"] == 0.5


def sched(**hp) -> optim.LRSchedule:
    return optim.LRSchedule({"lr": 1.0, **hp}, total_epochs=10)


def test_lr_schedule_constant() -> None:
    assert [sched(lr_schedule="constant").factor(t) for t in (0, 5, 9.9)] == [1.0, 1.0, 1.0]


def test_lr_schedule_step_with_lr_step_epochs_and_gamma() -> None:
    s = sched(lr_schedule="step", lr_step_epochs=3, lr_gamma=0.5)
    assert [s.factor(t) for t in (0, 2.9, 3, 6.5, 9)] == [1.0, 1.0, 0.5, 0.25, 0.125]


def test_lr_schedule_cosine_and_min_ratio() -> None:
    s = sched(lr_schedule="cosine", lr_min_ratio=0.1)
    assert s.factor(0) == pytest.approx(1.0)
    assert s.factor(5) == pytest.approx(0.55)
    assert s.factor(10) == pytest.approx(0.1)


def test_lr_schedule_onecycle_matches_torch() -> None:
    s = sched(lr_schedule="onecycle")
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    total = 100
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=total + 1, cycle_momentum=False,
                                              anneal_strategy="cos", three_phase=False)
    torch_lrs = []
    for _ in range(total):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    ours = [s.factor(10 * i / total) for i in range(total)]
    np.testing.assert_allclose(ours, torch_lrs, rtol=0.05, atol=1e-4)
    assert max(ours) == pytest.approx(1.0, rel=0.02) and ours[0] == pytest.approx(1 / 25, rel=0.05)


def test_warmup_goes_in_front_of_any_schedule() -> None:
    s = sched(lr_schedule="cosine", warmup_epochs=2)
    assert s.factor(0) == pytest.approx(optim.WARMUP_START)
    assert s.factor(1) == pytest.approx(0.5 * (1 + optim.WARMUP_START))
    assert s.factor(2) == pytest.approx(1.0)  # the cosine starts after the warm-up
    assert s.factor(6) == pytest.approx(0.5)
    step = sched(lr_schedule="step", warmup_epochs=1, lr_step_epochs=2, lr_gamma=0.1)
    assert step.factor(2.5) == pytest.approx(1.0) and step.factor(3.5) == pytest.approx(0.1)


def test_plateau_decays_after_patience() -> None:
    s = sched(lr_schedule="plateau", plateau_patience=2, lr_gamma=0.5)
    for loss in (1.0, 0.9, 0.9, 0.9):  # two epochs without improvement after 0.9
        s.epoch_end(loss)
    assert s.factor(4) == 0.5
    s.epoch_end(0.5)
    s.epoch_end(0.5)
    assert s.factor(6) == 0.5  # improved, then one bad epoch: no decay yet
    s.epoch_end(0.5)
    assert s.factor(7) == 0.25
    restored = sched(lr_schedule="plateau", plateau_patience=2, lr_gamma=0.5)
    restored.load_state_dict(s.state_dict())
    assert restored.factor(7) == 0.25


def test_schedule_reaches_the_optimizer_during_training(cfg, iris) -> None:
    _, history = train(cfg, iris, max_epochs=4, lr=0.01, lr_schedule="step", lr_step_epochs=2, lr_gamma=0.1)
    assert [h["lr"] for h in history] == pytest.approx([0.01, 0.01, 0.001, 0.001])


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_grad_clip(mode) -> None:
    model = nn.Linear(10, 1)
    for p in model.parameters():
        p.grad = torch.full_like(p, 5.0)
    optim.clip_gradients(model.parameters(), {"grad_clip": 0.5, "grad_clip_by": mode})
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    if mode == "norm":
        assert float(grads.norm()) == pytest.approx(0.5, rel=1e-4)
        assert torch.allclose(grads, grads[0])  # the direction is kept
    else:
        assert torch.all(grads == 0.5)
    for p in model.parameters():
        p.grad = torch.full_like(p, 5.0)
    optim.clip_gradients(model.parameters(), {"grad_clip": None, "grad_clip_by": mode})
    assert torch.all(torch.cat([p.grad.flatten() for p in model.parameters()]) == 5.0)


# -- losses -----------------------------------------------------------------------------------------


def test_loss_auto_picks_bce_for_two_classes_and_cross_entropy_for_more(cfg, iris, binary, diabetes) -> None:
    assert parts(cfg, binary).loss.kind == "bce" and linears(parts(cfg, binary).model)[-1].out_features == 1
    assert parts(cfg, iris).loss.kind == "cross_entropy" and linears(parts(cfg, iris).model)[-1].out_features == 3
    assert parts(cfg, diabetes).loss.kind == "mse"
    two = parts(cfg, binary, loss="cross_entropy")
    assert linears(two.model)[-1].out_features == 2
    with pytest.raises(ValueError, match="bce needs two classes"):
        resolve_loss("bce", "classification", 3)
    with pytest.raises(ValueError, match="regression loss"):
        resolve_loss("huber", "classification", 3)


def test_bce_and_cross_entropy_report_the_same_val_loss(cfg, binary) -> None:
    """A sigmoid's BCE on logit z equals a softmax's cross-entropy on logits [0, z]."""
    bce = parts(cfg, binary, loss="bce")
    z = torch.randn(50, 1)
    y = torch.as_tensor(binary.y_val[:50])
    softmax_of_two = float(F.cross_entropy(torch.cat([torch.zeros_like(z), z], 1), y))
    assert bce.loss.plain(z, y) == pytest.approx(softmax_of_two, rel=1e-5)


def test_class_weights_auto_is_inverse_frequency(cfg, binary) -> None:
    y = np.array([0] * 30 + [1] * 10)
    np.testing.assert_allclose(class_weights(y, 2).numpy(), [40 / 60, 40 / 20])
    loss = parts(cfg, binary, class_weights="auto").loss
    counts = np.bincount(binary.y_train)
    np.testing.assert_allclose(loss.weights.numpy(), len(binary.y_train) / (2 * counts), rtol=1e-6)
    assert parts(cfg, binary, class_weights="none").loss.weights is None


def test_class_weights_and_label_smoothing_change_the_cross_entropy(cfg, iris) -> None:
    out, y = torch.randn(20, 3), torch.as_tensor(iris.y_train[:20])
    plain = parts(cfg, iris).loss
    smooth = parts(cfg, iris, label_smoothing=0.1).loss
    weighted = parts(cfg, iris, class_weights="auto").loss
    assert float(plain(out, y)) == pytest.approx(float(F.cross_entropy(out, y)))
    assert float(smooth(out, y)) == pytest.approx(float(F.cross_entropy(out, y, label_smoothing=0.1)))
    assert float(weighted(out, y)) == pytest.approx(float(F.cross_entropy(out, y, weight=weighted.weights)))
    assert smooth.plain(out, y) == pytest.approx(plain.plain(out, y))  # val_loss is the plain loss


def test_bce_label_smoothing_moves_targets_toward_one_half(cfg, binary) -> None:
    z, y = torch.randn(10, 1), torch.tensor([0, 1] * 5)
    loss = parts(cfg, binary, label_smoothing=0.2).loss
    target = y.float() * 0.8 + 0.1
    assert float(loss(z, y)) == pytest.approx(float(F.binary_cross_entropy_with_logits(z.squeeze(1), target)))


@pytest.mark.parametrize("name, fn", [("mse", lambda p, y, d: F.mse_loss(p, y)),
                                      ("mae", lambda p, y, d: F.l1_loss(p, y)),
                                      ("huber", lambda p, y, d: F.huber_loss(p, y, delta=d))])
def test_regression_losses(cfg, diabetes, name, fn) -> None:
    loss = parts(cfg, diabetes, loss=name, huber_delta=0.5).loss
    out, y = torch.randn(30, 1) * 3, torch.randn(30)
    assert float(loss(out, y)) == pytest.approx(float(fn(out.squeeze(1), y, 0.5)))


def test_regression_metrics_are_in_the_target_units(cfg, diabetes) -> None:
    p = parts(cfg, diabetes)
    x, y = torch.as_tensor(diabetes.x_val), torch.as_tensor(diabetes.y_val)
    m = evaluate(p.model, x, y, diabetes, p.loss, "val", diabetes.y_val_units)
    pred = diabetes.to_target_units(p.model(x).detach().squeeze(1).double().numpy())
    rmse = float(np.sqrt(np.mean((pred - diabetes.y_val_units) ** 2)))
    assert m["val_rmse"] == pytest.approx(rmse)
    assert m["val_loss"] == pytest.approx((rmse / diabetes.target_std) ** 2)
    assert 40 < diabetes.target_std < 120  # disease progression units, not standardised


# -- data scaling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["standard", "minmax", "quantile", "none"])
def test_feature_scaling(scale) -> None:
    rng = np.random.default_rng(0)
    import pandas as pd

    frame = pd.DataFrame({"skewed": rng.lognormal(3, 1.5, 600), "y": rng.integers(0, 2, 600)})
    ds = data.prepare(frame, "y", "classification", scale=scale, seed=0)
    x = ds.x_train[:, 0]
    if scale == "standard":
        assert abs(x.mean()) < 1e-5 and x.std() == pytest.approx(1, rel=1e-3)
    elif scale == "minmax":
        assert x.min() == 0 and x.max() == 1
    elif scale == "quantile":  # an even spread: each decile holds about a tenth of the rows
        assert x.min() >= 0 and x.max() <= 1
        np.testing.assert_allclose(np.histogram(x, bins=10, range=(0, 1))[0] / len(x), 0.1, atol=0.03)
    else:  # the raw values
        assert set(np.round(x, 3)) <= set(np.round(frame["skewed"].to_numpy(dtype=np.float32), 3))


@pytest.mark.parametrize("target_scale", ["standard", "minmax", "quantile", "none"])
def test_target_scaling_and_its_inverse(target_scale) -> None:
    frame = _frame(datasets.load_diabetes)
    ds = data.prepare(frame, "target", "regression", target_scale=target_scale, seed=0)
    y = ds.y_train
    if target_scale == "standard":
        assert abs(y.mean()) < 1e-4 and y.std() == pytest.approx(1, rel=1e-3)
    elif target_scale in ("minmax", "quantile"):
        assert y.min() >= 0 and y.max() <= 1
    else:
        assert y.max() > 100
    np.testing.assert_allclose(ds.to_target_units(ds.y_val), ds.y_val_units, rtol=1e-3, atol=0.5)


# -- batches, early stopping, determinism ------------------------------------------------------------


def test_batch_growth() -> None:
    hp = {"batch_size": 16, "batch_growth_every": 2, "batch_size_max": 64}
    assert [optim.batch_size_at(hp, e) for e in range(1, 9)] == [16, 16, 32, 32, 64, 64, 64, 64]
    assert optim.batch_size_at({"batch_size": 16, "batch_growth_every": None}, 9) == 16


def test_batch_growth_during_training(cfg, iris) -> None:
    _, history = train(cfg, iris, max_epochs=4, batch_size=8, batch_growth_every=1, batch_size_max=32)
    assert [h["batch_size"] for h in history] == [8, 16, 32, 32]


def test_shuffle_off_keeps_the_batch_order(cfg, iris) -> None:
    """Without shuffling, the batch order does not depend on the seed: two seeds with the same
    initial weights (no shuffle, same model seed) train identically only when the order is fixed."""
    a = train(cfg, iris, max_epochs=3, shuffle=False, seed=1)[1]
    b = train(cfg, iris, max_epochs=3, shuffle=True, seed=1)[1]
    c = train(cfg, iris, max_epochs=3, shuffle=False, seed=1)[1]
    assert [h["train_loss"] for h in a] == [h["train_loss"] for h in c]
    assert [h["train_loss"] for h in a] != [h["train_loss"] for h in b]


def test_in_trial_early_stopping(cfg, iris) -> None:
    result, history = train(cfg, iris, max_epochs=20, patience=3, min_delta=100.0)  # nothing counts as better
    assert result["trial_status"] == "stopped_early" and len(history) == 4
    result, history = train(cfg, iris, max_epochs=6, patience=3)
    assert result["trial_status"] == "completed" and len(history) == 6


def test_same_seed_same_run_other_seed_other_run(cfg, iris) -> None:
    a = train(cfg, iris, max_epochs=3, seed=5, deterministic=True)[1]
    b = train(cfg, iris, max_epochs=3, seed=5, deterministic=True)[1]
    c = train(cfg, iris, max_epochs=3, seed=6, deterministic=True)[1]
    assert torch.are_deterministic_algorithms_enabled()
    train(cfg, iris, max_epochs=1, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    key = ("train_loss", "val_loss")
    assert [[h[k] for k in key] for h in a] == [[h[k] for k in key] for h in b]
    assert [[h[k] for k in key] for h in a] != [[h[k] for k in key] for h in c]


# -- diagnostics ------------------------------------------------------------------------------------


def test_a_huge_learning_rate_diverges(cfg, iris) -> None:
    result, history = train(cfg, iris, max_epochs=10, optimizer="sgd", lr=50.0, momentum=0.9, grad_clip=None)
    assert result["trial_status"] == "diverged"
    assert "lower the learning rate" in result["stop_reason"]
    assert math.isinf(result["val_loss"])  # the scheduler sees the worst value, not NaN


def test_a_growing_loss_diverges_before_it_is_nan(cfg, iris) -> None:
    """The loss factor catches a run that blows up without ever producing NaN."""
    result, _ = train(cfg, iris, max_epochs=10, optimizer="adam", lr=5.0, grad_clip=None, divergence_factor=2.0)
    assert result["trial_status"] == "diverged" and "over 2x its first value" in result["stop_reason"]
    result, _ = train(cfg, iris, max_epochs=3, optimizer="adam", lr=1e-3, divergence_factor=2.0)
    assert result["trial_status"] == "completed"


def test_dead_network_is_flagged_collapsed(cfg, iris, diabetes) -> None:
    result, history = train(cfg, iris, max_epochs=2, bias_init=-10.0)
    assert result["collapsed"] and history[-1]["val_collapsed"] == 1.0 and history[-1]["val_top_class_share"] == 1.0
    result, history = train(cfg, iris, max_epochs=2)
    assert not result["collapsed"] and history[-1]["val_collapsed"] == 0.0
    result, history = train(cfg, diabetes, max_epochs=2, bias_init=-10.0)
    assert result["collapsed"] and history[-1]["val_pred_std_ratio"] < 0.01


# -- every knob as a search-space knob --------------------------------------------------------------

# A search-space spec for every hyperparameter of the default model and the trainer.
KNOB_SPECS = {
    "optimizer": {"choice": ["sgd", "adam", "adamw"]},
    "lr": {"loguniform": [1e-4, 1e-1]},
    "weight_decay": {"loguniform": [1e-6, 1e-2]},
    "momentum": {"log1m": [0.5, 0.99]},
    "nesterov": {"choice": [False, True]},
    "beta1": {"log1m": [0.8, 0.99]},
    "beta2": {"log1m": [0.99, 0.9999]},
    "eps": {"loguniform": [1e-10, 1e-6]},
    "lr_schedule": {"choice": ["constant", "step", "cosine", "onecycle", "plateau"]},
    "warmup_epochs": {"uniform": [0.0, 3.0]},
    "lr_step_epochs": {"int": [1, 10]},
    "lr_gamma": {"uniform": [0.1, 0.9]},
    "plateau_patience": {"int": [1, 5]},
    "lr_min_ratio": {"uniform": [0.0, 0.1]},
    "grad_clip": {"loguniform": [0.1, 10.0]},
    "grad_clip_by": {"choice": ["norm", "value"]},
    "loss": {"choice": ["auto", "cross_entropy"]},
    "huber_delta": {"loguniform": [0.1, 3.0]},
    "class_weights": {"choice": ["none", "auto"]},
    "label_smoothing": {"uniform": [0.0, 0.2]},
    "batch_size": {"pow2": [16, 128]},
    "shuffle": {"choice": [True, False]},
    "batch_growth_every": {"int": [1, 5]},
    "batch_size_max": {"pow2": [128, 1024]},
    "patience": {"int": [2, 10]},
    "min_delta": {"uniform": [0.0, 0.01]},
    "divergence_factor": {"uniform": [5.0, 20.0]},
    "seed": {"int": [0, 1000]},
    "deterministic": {"choice": [False, True]},
    "scale": {"choice": ["standard", "quantile", "minmax", "none"]},
    "target_scale": {"choice": ["standard", "quantile"]},
    "hidden": {"int": [16, 256], "log": True},
    "layers": {"int": [1, 4]},
    "shrink": {"choice": [1.0, 0.5]},
    "widths": {"choice": [[64, 32], [128, 64, 32]]},
    "dropout": {"uniform": [0.0, 0.5]},
    "activation": {"choice": ["relu", "leaky_relu", "gelu", "elu", "tanh"]},
    "batch_norm": {"choice": [False, True]},
    "init": {"choice": ["auto", "kaiming", "xavier", "orthogonal"]},
    "bias_init": {"uniform": [0.0, 0.1]},
}


def test_every_hyperparameter_has_a_knob_spec(cfg) -> None:
    assert set(KNOB_SPECS) == set(schema.hyperparameter_names(cfg))


@pytest.mark.parametrize("name", sorted(KNOB_SPECS))
def test_every_hyperparameter_works_as_a_search_space_knob(tmp_path, name) -> None:
    overrides = ["data.source=sklearn:iris", "scheduler.max_epochs=2"]
    if name == "target_scale":
        overrides = ["data.source=sklearn:diabetes", "data.task=regression", "objective.metric=val_rmse",
                     "scheduler.max_epochs=2"]
    if name == "huber_delta":
        overrides = ["data.source=sklearn:diabetes", "data.task=regression", "train.loss=huber",
                     "scheduler.max_epochs=2"]
    cfg = plan.load(CONFIG, [*overrides, f"search_space={{{name}: {_yaml(KNOB_SPECS[name])}}}"])
    search = spaces.check_search(cfg)
    assert search.space.searched == [name]
    from orchestrator.tune.compile import data_variants

    dataset = data_variants(cfg, data.load(cfg), search.space)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(6):
        point = search.space.sample(rng)
        hp = hyperparameters(point, search.space.base)
        assert hp[name] is point[name]
        seen.add(repr(point[name]))
        torch.manual_seed(0)
        p = build(hp, dataset, "mlp", 2)
        assert p.hp[name] is point[name]
        setup = dataclasses.replace(setup_for(cfg, 2), base=search.space.base)
        result = run_trial(point, dataset, setup, lambda r, c: None)
        assert result["trial_status"] in ("completed", "stopped_early")
    assert len(seen) > 1  # the knob was really varied


def _yaml(spec) -> str:
    import json

    return json.dumps(spec)


# -- every knob as a fixed value in the config ------------------------------------------------------

FIXED_VALUES = {  # a value other than the default, and a value the key must refuse
    "train.lr_schedule": ("onecycle", "linear"),
    "train.warmup_epochs": (2.0, -1),
    "train.lr_step_epochs": (3, 0),
    "train.lr_gamma": (0.5, 1.5),
    "train.plateau_patience": (2, 0),
    "train.lr_min_ratio": (0.05, 2),
    "train.grad_clip_by": ("value", "max"),
    "train.loss": ("cross_entropy", "hinge"),
    "train.huber_delta": (2.0, 0),
    "train.class_weights": ("auto", "balanced"),
    "train.label_smoothing": (0.1, 1.0),
    "train.shuffle": (False, "sometimes"),
    "train.batch_growth_every": (2, 0),
    "train.batch_size_max": (256, 0),
    "train.divergence_factor": (5.0, 1.0),
    "train.deterministic": (True, "maybe"),
    "data.scale": ("quantile", "robust"),
    "data.target_scale": ("minmax", "log"),
    "model.shrink": (0.5, 1.5),
    "model.widths": ([64, 32], [64, -1]),
    "model.init": ("orthogonal", "he"),
    "model.bias_init": (0.01, "small"),
    "model.activation": ("gelu", "swish"),
}


@pytest.mark.parametrize("key", sorted(FIXED_VALUES))
def test_every_new_key_works_as_a_fixed_value_and_refuses_a_bad_one(key) -> None:
    good, bad = FIXED_VALUES[key]
    section, name = key.split(".")
    cfg = plan.load(CONFIG, [f"{key}={_yaml(good)}"])
    assert schema.base_hyperparameters(cfg)[name] == good
    with pytest.raises(config.ConfigError) as err:
        plan.load(CONFIG, [f"{key}={_yaml(bad)}"])
    message = str(err.value)
    assert key in message and "\n" not in message


def test_tpe_refuses_list_valued_choices() -> None:
    with pytest.raises(config.ConfigError, match="search_space.widths.choice: tpe takes choices"):
        plan.load(CONFIG, ["search.algorithm=tpe", "search_space={widths: {choice: [[64, 32], [128]]}}"])
