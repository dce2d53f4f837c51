"""Re-tune stale studies: read the store, decide what is stale, re-tune it warm-started.

A study is **stale** when any rule of its config's ``retune:`` section fires:

- ``stale_age``: its last sweep ended more than ``max_age_days`` ago;
- ``data_changed``: the data's fingerprint today differs from the one its best was trained on
  (``on_data_change``);
- ``drift``: the current best config, re-trained on today's data (one trial, the same epochs),
  scores worse than the recorded best by more than ``drift_tolerance`` (relative), or worse than
  ``drift_floor`` (``drift_check``; skipped by ``--dry-run``, which trains nothing);
- ``code_changed``: the trainer's or the model's code differs from the last sweep's
  (``on_code_change``, off by default).

Every decision is a row of the store's ``decisions`` table with its evidence (ages,
fingerprints, the two scores). A stale study gets a re-tune sweep: its previous top configs go in
first (``points_to_evaluate``), the space is zoomed around them (the coarse-to-fine rule), and the
sweep row records ``reason`` and ``parent_sweep_id``. The re-tune is promoted (``orch best``, and
``<store>/best/<study>.yaml``) only when it beats the current best.

The store may be a prefix in object storage (``s3://bucket/prefix``): the decisions and the
re-tune sweeps go to the same store (the one :class:`Store` the command opened).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from orchestrator.config import schema
from orchestrator.config.checks import check_range, did_you_mean
from orchestrator.config.load import uses_project_code
from orchestrator.errors import UserError
from orchestrator.store import trials as trial_rules
from orchestrator.store.fs import ObjectPath
from orchestrator.store.tables import Store

if TYPE_CHECKING:
    from orchestrator.train.data import Dataset

REASONS = ("data_changed", "drift", "code_changed", "stale_age")  # the sweep's reason: the first that fired


@dataclass
class Decision:
    study: str
    verdict: str  # stale | fresh | error
    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    last_tuned: datetime | None = None
    # The study's config, as its last sweep ran it (parsed when a re-tune needs it).
    cfg: schema.SweepConfig | None = None
    row: pd.Series | None = None  # its last sweep
    overrides: dict[str, Any] = field(default_factory=dict)  # retune: policy from the command line
    best: pd.Series | None = None  # the current best's sweeps row
    error: str = ""

    @property
    def reason(self) -> str:
        return next((r for r in REASONS if r in self.reasons), "")


def parse_policy(overrides: list[str]) -> dict[str, Any]:
    """``retune.KEY=VALUE`` overrides of every study's ``retune:`` policy, checked."""
    import yaml


    fields = {f.name for f in dataclasses.fields(schema.RetuneConfig)}
    out: dict[str, Any] = {}
    for item in overrides:
        key, _, raw = item.partition("=")
        name = key.removeprefix("retune.")
        if not key.startswith("retune.") or name not in fields:
            raise UserError(f"override {item!r}: only retune.KEY=VALUE, KEY one of {', '.join(sorted(fields))}"
                            f"{did_you_mean(name, sorted(fields))}")
        out[name] = yaml.safe_load(raw)
    try:
        policy = dataclasses.replace(schema.RetuneConfig(), **out)
        for name, value in out.items():
            if isinstance(getattr(schema.RetuneConfig(), name), bool) and not isinstance(value, bool):
                raise ValueError(f"retune.{name}: must be true or false (got {value!r})")
        probe = schema.SweepConfig(study="probe", retune=policy)
        check_range("retune.max_age_days", probe.retune.max_age_days, 0, None, lo_open=True)
        check_range("retune.drift_tolerance", probe.retune.drift_tolerance, 0)
        check_range("retune.top_k", probe.retune.top_k, 1)
        check_range("retune.num_samples", probe.retune.num_samples, 1, allow_none=True)
    except (TypeError, ValueError) as err:
        raise UserError(str(err)) from None
    return out


def parse_now(text: str | None) -> datetime:
    """``--now``: an ISO time (UTC when it has no zone); default: the clock."""
    if not text:
        return datetime.now(timezone.utc)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--now: not an ISO time such as 2026-11-23T03:00:00Z (got {text!r})") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def studies(store: Store) -> list[str]:
    return sorted(store.sweeps()["study"].astype(str).unique()) if store.files("sweeps") else []


def _config(row: pd.Series) -> schema.SweepConfig:
    from orchestrator.config import load as config_mod

    cfg = config_mod.from_yaml(row["config_yaml"])
    path = row.get("config_path")
    if isinstance(path, str) and path:
        cfg.source_file = path
    return cfg


def _light(row: pd.Series, overrides: dict[str, Any]) -> Any:
    """The parts of a stored config a decision reads (study, data, model, retune): a plain YAML
    read, not the full config's schema merge and checks, which cost more than the decision. It
    stands in for the :class:`~orchestrator.config.schema.SweepConfig` where only those are read."""
    import types

    import yaml


    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 10x faster
    raw = yaml.load(row["config_yaml"], Loader=loader) or {}
    path = row.get("config_path")
    return types.SimpleNamespace(
        study=raw.get("study"), model=raw.get("model") or {"name": "mlp"},
        data=schema.DataConfig(**(raw.get("data") or {})),
        retune=dataclasses.replace(schema.RetuneConfig(**(raw.get("retune") or {})), **overrides),
        source_file=path if isinstance(path, str) and path else None,
        project=raw.get("project"), trainable=raw.get("trainable"), params=raw.get("params") or {},
        callbacks=raw.get("callbacks") or [],
        model_signature=raw.get("model_signature"),
    )


def full_config(d: Decision) -> schema.SweepConfig:
    """The study's whole config (as its last sweep ran), with the command line's policy."""
    if d.cfg is None:
        d.cfg = _config(d.row)
        d.cfg.retune = dataclasses.replace(d.cfg.retune, **d.overrides)
    return d.cfg


def _worse(score: float, best: float, mode: str) -> float:
    """How much worse ``score`` is than ``best``, relative to it (negative: better)."""
    diff = (score - best) if mode == "min" else (best - score)
    return diff / max(abs(best), 1e-12)


def decide(store: Store, study: str, now: datetime, *, drift: bool = True,
           policy: dict[str, Any] | None = None, sweeps: pd.DataFrame | None = None) -> Decision:
    """Whether ``study`` is stale at ``now``, with the evidence (``policy`` overrides its ``retune:``;
    ``sweeps``: the store's sweeps table, when the caller has read it already)."""
    from orchestrator.store import queries

    sweeps = store.sweeps(study) if sweeps is None else sweeps[sweeps["study"].astype(str) == study]
    if sweeps.empty:
        return Decision(study, "error", error=f"no finished sweep of {study}")
    last = sweeps.sort_values("ended_at", kind="stable").iloc[-1]
    usable = sweeps.dropna(subset=["best_trial_id", "best_value"])
    best = queries._promoted(usable) if len(usable) else None
    last_tuned: datetime = pd.Timestamp(last["ended_at"]).to_pydatetime()
    d = Decision(study, "fresh", last_tuned=last_tuned, best=best, row=last, overrides=dict(policy or {}))
    cfg = _light(last, d.overrides)
    rules: schema.RetuneConfig = cfg.retune
    age = (now - last_tuned).total_seconds() / 86400.0
    d.evidence.update(last_sweep_id=last["sweep_id"], age_days=round(age, 3), max_age_days=rules.max_age_days)
    if age > rules.max_age_days:
        d.reasons.append("stale_age")
    if best is None:
        d.reasons.append("stale_age") if "stale_age" not in d.reasons else None
        d.evidence["best"] = None
        d.verdict = "stale"
        return d
    d.evidence.update(best_sweep_id=best["sweep_id"], best_value=float(best["best_value"]), metric=best["metric"])

    if uses_project_code(cfg):
        # Its data, model or training function is code of the user's, named by the store: imported
        # only if this machine signed that config.
        from orchestrator.tune import state_guard

        try:
            state_guard.trust_config(state_guard.load_key(store.root), str(last["sweep_id"]), "config_yaml",
                                     str(last["config_yaml"]), [last.get("config_sig")], f"study {study}")
        except UserError as err:
            d.verdict, d.error = "error", str(err)
            return d
    try:
        dataset = _load_cached(cfg)
    except Exception as err:  # a data file that went missing: say so, decide nothing
        d.verdict, d.error = "error", f"cannot load the data: {str(err).splitlines()[0]}"
        return d
    d.evidence.update(fingerprint_then=best.get("data_fingerprint"), fingerprint_now=dataset.fingerprint)
    if rules.on_data_change and best.get("data_fingerprint") != dataset.fingerprint:
        d.reasons.append("data_changed")

    if rules.on_code_change:
        from orchestrator.tune.compile import code_version

        now_code, then_code = code_version(cfg), last.get("code_version")
        d.evidence.update(code_then=then_code, code_now=now_code)
        if then_code and then_code != now_code:
            d.reasons.append("code_changed")

    if rules.drift_check and drift:
        score = rescore(store, best, full_config(d), dataset)
        worse = _worse(score, float(best["best_value"]), best["mode"])
        d.evidence.update(rescored=score, worse_by=round(worse, 6), drift_tolerance=rules.drift_tolerance,
                          drift_floor=rules.drift_floor)
        floor_hit = rules.drift_floor is not None and (
            score > rules.drift_floor if best["mode"] == "min" else score < rules.drift_floor)
        if not math.isfinite(score) or worse > rules.drift_tolerance or floor_hit:
            d.reasons.append("drift")
    elif rules.drift_check:
        d.evidence["rescored"] = "not checked"
    d.verdict = "stale" if d.reasons else "fresh"
    return d


_DATA_CACHE: dict[tuple, Any] = {}


def _load_cached(cfg: schema.SweepConfig) -> Dataset:
    """The study's data, loaded once per data config (and file version) in this process: many
    studies of one store often share a dataset."""
    from orchestrator.config.load import resolve_path
    from orchestrator.train import data as data_mod

    d = cfg.data
    stamp = None
    if d.path:
        p = resolve_path(cfg, d.path)
        stamp = (str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else str(p)
    key = (json.dumps(dataclasses.asdict(d), sort_keys=True, default=str), stamp)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = data_mod.load(cfg)
    return _DATA_CACHE[key]


def best_point(store: Store, best: pd.Series, cfg: schema.SweepConfig) -> dict[str, Any]:
    """The current best trial's searched knobs."""
    return top_points(store, best, cfg, 1)[0]


def top_points(store: Store, best: pd.Series, cfg: schema.SweepConfig, k: int) -> list[dict[str, Any]]:
    """The ``k`` best trials of the best sweep, as points of its space (searched knobs only)."""
    from orchestrator.space import space as spaces

    trials = store.trials(best.get("study", cfg.study), sweep_id=best["sweep_id"])
    col = f"best_{best['metric']}"
    ok = trial_rules.ranked(trial_rules.usable(trials).dropna(subset=[col]), col, best["mode"])
    first = ok[ok["trial_id"] == best["best_trial_id"]]
    ok = pd.concat([first, ok[ok["trial_id"] != best["best_trial_id"]]]).head(k)
    searched = spaces.compile_space(cfg).searched
    points = [trial_rules.decode_config(row, searched) for _, row in ok.iterrows()]
    return points


def rescore(store: Store, best: pd.Series, cfg: schema.SweepConfig, dataset: Dataset) -> float:
    """The current best config re-trained on today's data: one trial, its full epochs, no Ray."""
    from orchestrator.train.trainer import run_trial
    from orchestrator.tune.compile import compile_sweep

    point = best_point(store, best, _config(best))
    plan = compile_sweep(cfg, dataset)
    setup = dataclasses.replace(plan.setup, report_epochs=frozenset({plan.setup.max_epochs}))
    result = run_trial(point, plan.data if plan.data is not None else dataset, setup, lambda r, c: None)
    value = (result.get("best") or {}).get(best["metric"], float("nan"))
    return float(value) if value is not None else float("nan")



def warm_config(store: Store, d: Decision) -> schema.SweepConfig:
    """The re-tune sweep's config: the previous top configs first, the space zoomed around them."""
    from orchestrator.space import space as spaces

    cfg = full_config(d)
    if d.best is None:
        return cfg
    top = top_points(store, d.best, _config(d.best), cfg.retune.top_k)
    space = spaces.compile_space(cfg)
    zoomed = space.zoom(top, cfg.search.zoom_margin)
    new = dataclasses.replace(
        cfg,
        search_space={name: knob.spec() for name, knob in zoomed.knobs.items()},
        search=dataclasses.replace(cfg.search, points_to_evaluate=[space.complete(p) for p in top], stages=1,
                                   num_samples=max(cfg.retune.num_samples or cfg.search.num_samples, len(top))),
    )
    from orchestrator.tune import plan

    plan.check(new)
    return new


def record(store: Store, d: Decision, now: datetime, sweep_id: str | None = None, promoted: bool | None = None,
           outcome: str = "") -> None:
    store.append("decisions", d.study, [{
        "decided_at": now,
        "verdict": d.verdict,
        "reason": d.reason or None,
        "reasons": json.dumps(d.reasons),
        "evidence": json.dumps(d.evidence, default=str),
        "error": d.error or None,
        "retune_sweep_id": sweep_id,
        "promoted": promoted,
        "outcome": outcome or None,
    }], sweep_id or f"decision-{now:%Y%m%dT%H%M%S}")


def _fmt_time(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t else "-"


def table(decisions: list[Decision]) -> str:
    rows = [("study", "last tuned", "verdict", "reason")]
    for d in decisions:
        why = ", ".join(d.reasons) if d.reasons else (d.error or "-")
        if d.verdict == "fresh":
            why = f"age {d.evidence.get('age_days', 0):.1f}d of {d.evidence.get('max_age_days', 0):g}"
            if isinstance(d.evidence.get("rescored"), float):
                why += f", rescored {d.evidence['rescored']:.4g} vs {d.evidence.get('best_value', float('nan')):.4g}"
        rows.append((d.study, _fmt_time(d.last_tuned), d.verdict, why))
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows) + "\n"


def run(store_root: str | Path | ObjectPath, names: list[str], *, all_studies: bool, now: datetime, dry_run: bool,
        drift: bool = True, address: str | None = None, echo: Callable[[str], None] = print,
        policy: dict[str, Any] | None = None, report: bool = True) -> int:
    """Decide for every named study (or all), re-tune the stale ones (``report``: and write each
    re-tune's report). Returns the exit status."""
    from orchestrator.tune import driver

    store = Store(store_root)
    known = studies(store)
    if not names and not all_studies:
        raise UserError("name the studies to re-tune, or give --all")
    chosen = known if all_studies else names
    missing = [s for s in chosen if s not in known]
    if missing:
        raise UserError(f"no study {missing[0]!r} in {store.root}; studies: {', '.join(known) or '(none)'}")
    table_all = store.sweeps()  # read once for every study
    decisions = [decide(store, s, now, drift=drift and not dry_run, policy=policy, sweeps=table_all) for s in chosen]
    echo(table(decisions).rstrip())
    status = 0
    for d in decisions:
        if d.verdict != "stale" or dry_run:
            record(store, d, now, outcome="dry run" if dry_run and d.verdict == "stale" else "")
            status = max(status, 1 if d.verdict == "error" else 0)
            continue
        cfg = warm_config(store, d)
        echo(f"\nRe-tuning {d.study} ({', '.join(d.reasons)}): {cfg.search.num_samples} trials, the previous "
             f"{len(cfg.search.points_to_evaluate or [])} best first, space zoomed around them")
        reference = d.evidence.get("rescored") if isinstance(d.evidence.get("rescored"), float) else None
        result = driver.run(cfg, store=store, address=address, echo=echo, reason=d.reason or "stale_age",
                               parent_sweep_id=d.best["sweep_id"] if d.best is not None else None,
                               reference=reference, report=report)
        if not result.finished:
            record(store, d, now, result.sweep_id, False, "interrupted")
            return 130
        ref = result.reference
        if result.promoted:
            outcome = (f"promoted: {result.metric} {result.best_value:.6g} beats "
                       f"{'nothing' if ref is None else f'{ref:.6g}'}; {store.root / 'best' / (d.study + '.yaml')}")
        else:
            best = "no usable trial" if result.best_value is None else f"{result.best_value:.6g}"
            outcome = f"kept the current best ({ref:.6g}); the re-tune reached {best}"
        echo(f"{d.study}: {outcome}")
        record(store, d, now, result.sweep_id, result.promoted, outcome)
        driver.announce_report(result, echo)
    return status
