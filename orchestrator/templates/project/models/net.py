"""The model: a factory orch calls with the data's shape and a trial's hyperparameters.

orch fills in the keyword parameters named ``input_shape`` (one sample's shape), ``n_inputs`` (the
product of input_shape), ``n_outputs`` and ``task`` from the data; every other keyword parameter is
a hyperparameter: set it in conf/sweep.yaml (``model: {hidden: 64}``) or search it
(search_spaces/mlp_adam.yaml: ``hidden: {int: [32, 512], log: true}``). orch checks every value
before a sweep by building the model with it, so a factory that raises ValueError for a value that
cannot work turns a typo into a one-line config error instead of a failed trial.
"""

from __future__ import annotations

from torch import nn


def build(*, n_inputs: int, n_outputs: int, hidden: int = 64, layers: int = 2, dropout: float = 0.0) -> nn.Module:
    """An MLP: ``layers`` hidden blocks (Linear, ReLU, Dropout) of ``hidden`` units, then a linear head.

    Inputs of any shape (a table's rows, images) are flattened to ``n_inputs`` features first.
    """
    if not 1 <= hidden <= 1 << 16:
        raise ValueError(f"hidden must be in [1, 65536], got {hidden!r}")
    if not 0 <= layers <= 64:
        raise ValueError(f"layers must be in [0, 64], got {layers!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    blocks: list[nn.Module] = [nn.Flatten()]
    width = n_inputs
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    blocks.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*blocks)
