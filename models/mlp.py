"""A multi-layer perceptron for tabular data."""

from __future__ import annotations

from torch import nn

from models.registry import register

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
}


@register("mlp")
def mlp(
    n_inputs: int,
    n_outputs: int,
    hidden: int = 128,
    layers: int = 2,
    dropout: float = 0.0,
    activation: str = "relu",
    batch_norm: bool = False,
) -> nn.Module:
    """``layers`` hidden blocks of ``hidden`` units: Linear -> [BatchNorm] -> activation -> [Dropout].

    ReLU-family activations get He (Kaiming) initialisation, tanh gets Xavier. With batch norm the
    linear layer has no bias (the norm's shift replaces it).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    hidden, layers = int(hidden), int(layers)
    blocks: list[nn.Module] = []
    width_in = n_inputs
    for _ in range(layers):
        linear = nn.Linear(width_in, hidden, bias=not batch_norm)
        if activation == "tanh":
            nn.init.xavier_uniform_(linear.weight)
        else:
            nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
            nn.init.kaiming_normal_(linear.weight, nonlinearity=nonlinearity)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
        blocks.append(linear)
        if batch_norm:
            blocks.append(nn.BatchNorm1d(hidden))
        blocks.append(ACTIVATIONS[activation]())
        if dropout > 0:
            blocks.append(nn.Dropout(float(dropout)))
        width_in = hidden
    head = nn.Linear(width_in, n_outputs)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    blocks.append(head)
    return nn.Sequential(*blocks)
