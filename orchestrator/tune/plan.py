"""A sweep's config, checked across stages: config, data, model and search space together.

``load(path, overrides)`` is what every command that runs or checks a sweep calls: the config's
own checks (:func:`orchestrator.config.load.load`) and then those that need the search space
(knob names and values against the schema and the model, points to evaluate, the searcher's
needs). Importing this module imports neither torch nor Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.config import load as config
from orchestrator.config import models, schema
from orchestrator.config.schema import SweepConfig
from orchestrator.space import space as spaces

if TYPE_CHECKING:
    from orchestrator.train.data import Dataset


def check(cfg: SweepConfig) -> spaces.SearchPlan:
    """Check ``cfg`` across stages; return its search plan (space, points, number of trials).

    Raises:
        ConfigError: naming the first bad key (a knob, a point, a search setting).
    """
    config.validate(cfg)
    return spaces.check_search(cfg)


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Load a sweep config (base configs, the file, ``key=value`` overrides) and check it whole.

    Raises:
        ConfigError: on any unknown key, wrong type, out-of-range value, missing file or a search
            space that does not fit the config.
    """
    return load_with_search(path, overrides)[0]


def load_with_search(path: str | Path, overrides: list[str] | tuple[str, ...] = ()
                     ) -> tuple[SweepConfig, spaces.SearchPlan]:
    """:func:`load`, and the search plan its check compiled (space, points, number of trials)."""
    cfg = config.load(path, overrides)
    return cfg, spaces.check_search(cfg)


def check_model(cfg: SweepConfig, dataset: Dataset) -> None:
    """The config's model, built for the data's shape (on PyTorch's meta device) with the base
    hyperparameters, takes a batch of the data and gives one output per class (or one for
    regression).

    Raises:
        ConfigError: naming ``model`` (or ``model.factory``): the factory's error, something that is
            not an nn.Module, or outputs of the wrong shape.
    """
    from orchestrator.train.losses import TaskLoss

    model = models.model_id(cfg.model)
    base = schema.base_hyperparameters(cfg)
    hp = {k: base[k] for k in models.hyperparameters(model) if k in base}
    n_outputs = TaskLoss(base, dataset).n_outputs if cfg.trainable is None else dataset.n_outputs
    models.check_built(model, dataset.input_shape, n_outputs, dataset.task, hp,
                       key="model.factory" if models.is_path(model) else "model", inputs=dataset.inputs,
                       example=_example(dataset))


def _example(dataset: Dataset) -> list[Any]:
    """Two samples of the training split, one stacked tensor per input."""
    import torch

    if dataset.in_memory:
        return [torch.as_tensor(dataset.x_train[:2])]
    train = dataset.split("train")
    xs = [train[i][0] for i in range(min(2, len(train)))]
    parts = [x if isinstance(x, (tuple, list)) else (x,) for x in xs]
    return [torch.stack([torch.as_tensor(p[k]) for p in parts]) for k in range(len(parts[0]))]
