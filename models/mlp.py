"""A multi-layer perceptron for tabular data."""

from __future__ import annotations

from torch import nn

from orchestrator.config.models import register

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
}
INITS = ("auto", "kaiming", "xavier", "orthogonal")
MIN_WIDTH = 4  # a shrinking funnel never goes narrower than this
MAX_LAYERS = 1000  # beyond any MLP that trains; a typo such as 1e9 is an error, not a hang
MAX_WIDTH = 1 << 20


def widths_of(hidden: int, layers: int, shrink: float, widths: list[int] | None) -> list[int]:
    """The hidden layers' widths: ``widths`` as given, else ``layers`` layers starting at ``hidden``,
    each ``shrink`` times the one before (1.0: all equal; 0.5: a funnel that halves)."""
    if widths is not None:
        if (isinstance(widths, (str, bytes)) or len(widths) > MAX_LAYERS
                or not all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_WIDTH for w in widths)):
            raise ValueError(f"widths must be a list of at most {MAX_LAYERS} integers in [1, {MAX_WIDTH}], "
                             f"got {widths!r}")
        return list(widths)
    if not (0 <= int(layers) <= MAX_LAYERS and 1 <= int(hidden) <= MAX_WIDTH):
        raise ValueError(f"need layers in [0, {MAX_LAYERS}] and hidden in [1, {MAX_WIDTH}], "
                         f"got layers={layers!r}, hidden={hidden!r}")
    if not 0 < shrink <= 1:
        raise ValueError(f"shrink must be in (0, 1], got {shrink!r}")
    out, width = [], float(hidden)
    for _ in range(int(layers)):
        out.append(max(MIN_WIDTH, round(width)) if shrink < 1 else int(hidden))
        width *= shrink
    return out


def init_linear(linear: nn.Linear, activation: str, init: str, bias_init: float) -> None:
    """Initialise a hidden layer for the activation that follows it.

    ``auto`` is He (Kaiming) for the ReLU family (relu, leaky_relu, gelu, elu): it keeps the
    activations' variance constant through depth when half the units are zero; Xavier (Glorot) for
    tanh, which is linear near zero. A small positive ``bias_init`` (0.01-0.1) keeps ReLUs alive.
    """
    kind = init if init != "auto" else ("xavier" if activation == "tanh" else "kaiming")
    if kind == "kaiming":
        nonlinearity = "leaky_relu" if activation == "leaky_relu" else "relu"
        nn.init.kaiming_normal_(linear.weight, nonlinearity=nonlinearity)
    elif kind == "xavier":
        gain = nn.init.calculate_gain("tanh" if activation == "tanh" else "linear")
        nn.init.xavier_uniform_(linear.weight, gain=gain)
    else:
        gain = nn.init.calculate_gain("tanh") if activation == "tanh" else nn.init.calculate_gain("relu")
        nn.init.orthogonal_(linear.weight, gain=gain)
    if linear.bias is not None:
        nn.init.constant_(linear.bias, float(bias_init))


@register("mlp", mutable=("dropout",))
def mlp(
    n_inputs: int,
    n_outputs: int,
    hidden: int = 128,
    layers: int = 2,
    shrink: float = 1.0,
    widths: list[int] | None = None,
    dropout: float = 0.0,
    activation: str = "relu",
    batch_norm: bool = False,
    init: str = "auto",
    bias_init: float = 0.0,
) -> nn.Module:
    """Hidden blocks Linear -> [BatchNorm] -> activation -> [Dropout], then a linear head.

    Widths: ``widths`` (a list, wide first), else ``layers`` blocks starting at ``hidden`` units,
    each ``shrink`` times narrower. Batch norm sits before the activation, and its layer's linear
    map then has no bias (the norm's shift replaces it). ``dropout`` follows every hidden block.
    The head gets Xavier weights and a zero bias, so the first predictions are near-uniform.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if not 0 <= float(dropout) < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not isinstance(batch_norm, bool):
        raise ValueError(f"batch_norm must be true or false, got {batch_norm!r}")
    blocks: list[nn.Module] = []
    width_in = n_inputs
    for width in widths_of(hidden, layers, float(shrink), widths):
        linear = nn.Linear(width_in, width, bias=not batch_norm)
        init_linear(linear, activation, init, bias_init)
        blocks.append(linear)
        if batch_norm:
            blocks.append(nn.BatchNorm1d(width))
        blocks.append(ACTIVATIONS[activation]())
        # Always present (p = 0 is the identity): the module indices, and so a checkpoint's keys,
        # stay the same when population-based training moves dropout to or from 0.
        blocks.append(nn.Dropout(float(dropout)))
        width_in = width
    head = nn.Linear(width_in, n_outputs)
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    blocks.append(head)
    return nn.Sequential(*blocks)
