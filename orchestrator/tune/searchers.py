"""Search algorithms: a name -> factory table.

A factory takes the sweep config, its compiled ``Space``, the checked ``points_to_evaluate``
(known good configs to try first) and the sweep's experiment directory, and returns a Ray Tune
search algorithm and the number of trials the sweep will run.

* ``random``: orch's own seeded sampler over the space (log scales, ``log1m``, powers of two,
  conditional knobs), with coarse-to-fine stages (``search.stages``);
* ``tpe``: Optuna's TPE sampler through Ray Tune's ``OptunaSearch``, on the same scales;
* ``grid``: every combination of a space of discrete knobs, once each.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.search import ConcurrencyLimiter, SearchAlgorithm, Searcher

from orchestrator.space.space import SearchPlan, Space, stage_sizes
from orchestrator.store import fs
from orchestrator.tune.files import STAGES_FILE

if TYPE_CHECKING:
    import optuna

    from orchestrator.config.schema import SweepConfig

STAGE_KEY = "_stage"  # in a trial's config: the coarse-to-fine stage it was sampled in (1-based)


def trial_score(result: dict[str, Any] | None, metric: str) -> float | None:
    """A finished trial's best value of ``metric`` (None when it has none, or it is not finite).

    Searchers get Tune's flattened last result: the trial's best so far is ``best/<metric>``.
    """
    if not result:
        return None
    value = result.get(f"best/{metric}", (result.get("best") or {}).get(metric, result.get(metric)))
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


class SpaceSearcher(Searcher):
    """Samples a ``Space`` with a seeded generator, optionally in coarse-to-fine stages.

    Stage 1 samples the full space. Each later stage starts when every trial of the stage before
    has finished: it narrows every numeric knob to the range of the ``top_k`` best trials so far
    (on the knob's own scale, widened by ``margin`` and clipped to the original bounds, see
    ``Space.zoom``) and samples that. ``points`` are tried first, in stage 1; a point that names
    only some knobs has the rest sampled. The stages and their ranges are written to
    ``stages_path`` as they start.
    """

    def __init__(self, space: Space, *, metric: str, mode: str, num_samples: int, seed: int,
                 points: list[dict[str, Any]] | None = None, stages: int = 1, top_k: int | None = None,
                 margin: float = 0.1, stages_path: str | None = None, announce: bool = True) -> None:
        super().__init__(metric=metric, mode=mode)
        self.space = space
        self.sizes = stage_sizes(num_samples, stages)
        self.rng = np.random.default_rng(seed)
        self.points = [dict(p) for p in points or []]
        self.top_k = top_k
        self.margin = margin
        self.stages_path = stages_path
        self.announce = announce
        self.issued = 0
        self.stage_of: dict[str, int] = {}  # trial id -> stage (0-based)
        self.configs: dict[str, dict[str, Any]] = {}
        self.scores: dict[str, float | None] = {}  # finished trials
        self.stage_spaces: list[Space] = [space]
        self._log_stage(0)

    def _stage_for(self, index: int) -> int:
        total = 0
        for stage, size in enumerate(self.sizes):
            total += size
            if index < total:
                return stage
        return len(self.sizes) - 1

    # Searcher.FINISHED, a string, is a return value of suggest() that Ray's annotation leaves out.
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self.issued >= sum(self.sizes):
            return Searcher.FINISHED
        stage = self._stage_for(self.issued)
        if stage == len(self.stage_spaces):
            waiting = [t for t, s in self.stage_of.items() if s == stage - 1 and t not in self.scores]
            if waiting:
                return None  # asked again once the previous stage's trials finish
            self.stage_spaces.append(self.space.zoom(self.top_configs(), self.margin))
            self._log_stage(stage)
        given = self.points.pop(0) if self.points else None
        config = self.stage_spaces[stage].sample(self.rng, given)
        self.stage_of[trial_id] = stage
        self.configs[trial_id] = config
        self.issued += 1
        return {**config, STAGE_KEY: stage + 1}

    def top_configs(self) -> list[dict[str, Any]]:
        scored = [(s, t) for t, s in self.scores.items() if s is not None]
        scored.sort(key=lambda st: st[0], reverse=self.mode == "max")
        k = self.top_k or max(3, math.ceil(0.1 * len(self.scores)))
        return [self.configs[t] for _, t in scored[:k]]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.stage_of:
            self.scores[trial_id] = None if error else trial_score(result, self.metric)

    def _log_stage(self, stage: int) -> None:
        space = self.stage_spaces[stage]
        if self.announce and len(self.sizes) > 1:
            how = "full space" if stage == 0 else f"zoomed on the top {len(self.top_configs())} trials"
            print(f"Stage {stage + 1} of {len(self.sizes)}: {self.sizes[stage]} trials, {how}: "
                  f"{space.describe() or '(no knobs)'}", flush=True)
        if not self.stages_path:
            return
        log = [{"stage": i + 1, "trials": self.sizes[i], "ranges": s.ranges()}
               for i, s in enumerate(self.stage_spaces)]
        fs.write_bytes_atomic(fs.as_path(self.stages_path), json.dumps(log, default=str).encode())

    # Tune saves the searcher with the experiment state, so a resumed sweep continues the same
    # sequence of samples and stages.
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        stages_path = self.stages_path  # this run's (see relocate): the store may have moved
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self.stages_path = stages_path


def relocate(search_alg: SearchAlgorithm | Searcher | None, exp_dir: str | Path) -> None:
    """Point a restored search algorithm's stages file into ``exp_dir``, the sweep's experiment
    directory now (its pickled one is where the sweep started)."""
    searcher = search_alg
    while searcher is not None:  # (a ConcurrencyLimiter wraps the searcher)
        if isinstance(searcher, SpaceSearcher) and searcher.stages_path:
            searcher.stages_path = str(fs.as_path(exp_dir) / STAGES_FILE)
        searcher = getattr(searcher, "searcher", None)


def read_stages(exp_dir: str | Path) -> list[dict[str, Any]] | None:
    path = fs.as_path(exp_dir) / STAGES_FILE
    return json.loads(path.read_text()) if path.is_file() else None


# -- Optuna (TPE) ---------------------------------------------------------------------------------


class OptunaDefine:
    """A define-by-run space for Optuna: each knob's distribution names its Optuna parameter and
    decodes the value (``1 - beta`` of a ``log1m`` knob, the exponent of a power of two, ...).

    A class rather than a closure: Tune pickles the searcher with the experiment state.
    """

    def __init__(self, space: Space) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        space = self.space
        config: dict[str, Any] = {}
        for name, knob in space.knobs.items():
            if space.active(knob, config):
                config[name] = knob.distribution.suggest(trial, name)
        return config  # returned values win over the captured (encoded) ones


def _optuna_point(space: Space, point: dict[str, Any]) -> dict[str, Any]:
    """A point to evaluate in Optuna's parameters (fixed knobs left out)."""
    out = {}
    for name, value in space.complete(point).items():
        dist = space.knobs[name].distribution
        param = dist.optuna_name(name)
        if param is not None:
            out[param] = dist.to_optuna(value)
    return out


try:  # Optuna is a dependency, but keep the other searchers usable without it.
    from ray.tune.search.optuna import OptunaSearch
except ImportError:  # pragma: no cover
    _HAS_OPTUNA = False
else:
    _HAS_OPTUNA = True

def encoded_names(space: Space) -> set[str]:
    """Optuna's names for the knobs it samples on a transformed scale."""
    params = {n: k.distribution.optuna_name(n) for n, k in space.knobs.items()}
    return {p for n, p in params.items() if p not in (None, n)}


if _HAS_OPTUNA:

    class SpaceOptunaSearch(OptunaSearch):
        """``OptunaSearch`` that speaks in the knobs' values, and learns from each trial's best value
        of the objective (not the value at the epoch it happened to stop on)."""

        def __init__(self, *args: Any, encoded: Iterable[str] = frozenset(), **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._encoded = set(encoded)

        def suggest(self, trial_id: str):
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                return config
            return {k: v for k, v in config.items() if k not in self._encoded}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            if result and self.metric:
                best = trial_score(result, self.metric)
                result = {**result, self.metric: best} if best is not None else result
            super().on_trial_complete(trial_id, result, error)


# -- the table ------------------------------------------------------------------------------------


def _random(cfg: SweepConfig, search: SearchPlan, exp_dir: str | None) -> SpaceSearcher:
    q = cfg.search
    return SpaceSearcher(
        search.space, metric=cfg.objective.metric, mode=cfg.objective.mode, num_samples=search.n_trials,
        seed=q.seed, points=search.points, stages=q.stages, top_k=q.top_k, margin=q.zoom_margin,
        stages_path=str(fs.as_path(exp_dir) / STAGES_FILE) if exp_dir else None,
    )


def _grid(cfg: SweepConfig, search: SearchPlan, exp_dir: str | None) -> SpaceSearcher:
    return SpaceSearcher(
        search.space, metric=cfg.objective.metric, mode=cfg.objective.mode, num_samples=search.n_trials,
        seed=cfg.search.seed, points=search.points + search.space.grid(),
    )


def _tpe(cfg: SweepConfig, search: SearchPlan, exp_dir: str | None) -> Searcher:
    import logging

    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    optuna.logging.disable_default_handler()
    space = search.space
    return SpaceOptunaSearch(
        space=OptunaDefine(space), metric=cfg.objective.metric, mode=cfg.objective.mode,
        points_to_evaluate=[_optuna_point(space, p) for p in search.points] or None,
        sampler=optuna.samplers.TPESampler(seed=cfg.search.seed), encoded=encoded_names(space),
    )


SEARCHERS: dict[str, Callable[..., Any]] = {
    "random": _random,
    "tpe": _tpe,
    "grid": _grid,
}


def names() -> list[str]:
    return list(SEARCHERS)


def create(cfg: SweepConfig, search: SearchPlan, exp_dir: str | None = None) -> Searcher:
    """The Ray Tune search algorithm for the sweep."""
    searcher = SEARCHERS[cfg.search.algorithm](cfg, search, exp_dir)
    if cfg.search.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=cfg.search.max_concurrent)
    return searcher
