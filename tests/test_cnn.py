"""The shipped CNN: image shapes, argument errors, checkpoint keys under PBT, and that it learns digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from orchestrator.config.models import get, mutable
from orchestrator.examples.digits import images


def cnn(**kwargs):
    return get("cnn")(**kwargs)


@pytest.mark.parametrize(("input_shape", "batch", "blocks"), [
    ((1, 8, 8), (5, 1, 8, 8), 2),
    ((8, 8), (5, 8, 8), 2),  # (H, W): one channel, added by the model
    ((1, 8, 8), (5, 1, 8, 8), 6),  # more blocks than halvings: the last ones keep 1x1
    ((3, 28, 20), (5, 3, 28, 20), 3),
    ((2, 1, 7), (5, 2, 1, 7), 2),  # one pixel high: never pooled
])
def test_shapes(input_shape, batch, blocks):
    net = cnn(input_shape=input_shape, n_outputs=4, blocks=blocks, channels=4)
    assert net(torch.zeros(batch)).shape == (5, 4)


@pytest.mark.parametrize(("input_shape", "blocks", "positions"), [
    ((1, 8, 8), 1, 16),  # 8x8 pooled to 4x4: all 16 positions kept
    ((1, 8, 8), 2, 4),
    ((1, 8, 8), 3, 1),
    ((3, 224, 160), 2, 16),  # 56x40 averaged down to 4x4: the dense layer stays small
])
def test_dense_layer_sees_at_most_a_4x4_grid(input_shape, blocks, positions):
    net = cnn(input_shape=input_shape, blocks=blocks, channels=8)
    assert net.head[0].in_features == (8 << (blocks - 1)) * positions


def test_without_hidden_layer_or_batch_norm():
    net = cnn(hidden=0, batch_norm=False, activation="gelu", kernel=5)
    assert net(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_dropout_is_mutable_and_keeps_checkpoint_keys():
    assert "dropout" in mutable("cnn")
    assert cnn(dropout=0.0).state_dict().keys() == cnn(dropout=0.3).state_dict().keys()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"channels": 1e9}, r"channels must be an integer in \[1, 16384\], got 1000000000.0"),
    ({"channels": 2.5}, "channels must be an integer"),
    ({"channels": True}, "channels must be an integer"),
    ({"blocks": 0}, r"blocks must be an integer in \[1, 16\], got 0"),
    ({"channels": 4096, "blocks": 4}, "the last of 4 blocks would have 32768 channels"),
    ({"kernel": 4}, "kernel must be odd"),
    ({"hidden": -1}, r"hidden must be an integer in \[0, "),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ({"dropout": "0.1"}, "dropout must be in"),
    ({"batch_norm": "yes"}, "batch_norm must be true or false, got 'yes'"),
    ({"activation": "relu6"}, "activation must be one of relu, leaky_relu, gelu, elu, tanh, got 'relu6'"),
    ({"input_shape": (64,)}, r"cnn needs images: input_shape .* got \(64,\)"),
    ({"input_shape": (1, 0, 8)}, "input_shape's height must be an integer"),
    ({"n_outputs": 0}, "n_outputs must be an integer"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
    with torch.device("meta"), pytest.raises(ValueError, match=message) as err:
        cnn(**kwargs)
    assert "\n" not in str(err.value)


def test_the_largest_allowed_sizes_build_at_once_on_meta():
    with torch.device("meta"):
        cnn(input_shape=(3, 65536, 65536), channels=16384, blocks=1, hidden=1 << 20)
        cnn(channels=1, blocks=15)


@pytest.fixture
def one_thread():
    """One torch thread, as a sweep's trial on one CPU has (faster for a net this small)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_learns_digits(one_thread):
    """The defaults: above 95% validation accuracy within 5 epochs of Adam on the digits images."""
    torch.manual_seed(0)
    splits = images(0)
    net = cnn(input_shape=(1, 8, 8), n_outputs=10)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*splits["train"]), batch_size=64,
                                        shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        net.train()
        for x, y in train:
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    net.eval()
    x_val, y_val = splits["val"]
    with torch.no_grad():
        accuracy = (net(x_val).argmax(dim=1) == y_val).float().mean().item()
    assert accuracy > 0.95, accuracy
