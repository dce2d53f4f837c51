"""orch: hyperparameter sweeps for PyTorch models on Ray Tune."""

from __future__ import annotations

try:
    from importlib.metadata import version as _version

    __version__ = _version("orch")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
