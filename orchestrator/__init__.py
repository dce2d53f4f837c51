"""orch: hyperparameter sweeps for PyTorch models on Ray Tune.

From Python (see :mod:`orchestrator.api`)::

    import orchestrator as orch

    result = orch.sweep("conf/sweep.yaml")      # or a dict, or a SweepConfig
    orch.results(study=result.study)            # the trials, a pandas DataFrame
    orch.best(result.study)                     # the study's best config
    model = orch.load_model("results/best/tabular-digits")   # the study's model
    model.predict(frame)                        # labels and class probabilities, or values

Importing orchestrator is cheap and changes nothing in the process: the API is imported on first
use, and torch, Ray and pandas only when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    from importlib.metadata import version as _version

    __version__ = _version("orch")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

_API = ("sweep", "results", "best", "Sweep", "load_model")
_CONTRACT = ("TrialContext", "TrialStopped")  # for a training function's type hints (imports torch)

if TYPE_CHECKING:
    from orchestrator.api import Sweep, best, load_model, results, sweep
    from orchestrator.train.context import TrialContext, TrialStopped
else:
    # (Hidden from type checkers, which would take every attribute of the package for one.)
    def __getattr__(name: str) -> Any:
        if name in _API:
            from orchestrator import api

            return getattr(api, name)
        if name in _CONTRACT:
            from orchestrator.train import context

            return getattr(context, name)
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API, *_CONTRACT})


__all__ = ["__version__", "sweep", "results", "best", "Sweep", "load_model", "TrialContext", "TrialStopped"]
