"""Model quality: orch's default sweeps against scikit-learn's defaults, on the same test rows.

For every bundled dataset (digits, breast_cancer, wine, iris, diabetes) and two synthetic tables
(``mixed``: categories and missing values; ``weak``: a regression whose target is mostly noise),
and for each split seed (``data.seed`` and ``search.seed`` 0, 1, 2):

1. ``orch sweep`` with the shipped default config, as is (conf/tabular.yaml for classification,
   conf/tabular_regression.yaml for regression), capped at ``search.time_budget_s`` (5 minutes);
2. ``orch fit`` (the best config re-trained on train + validation rows) and
   ``orch export --ensemble 3`` (the top 3 trials averaged);
3. scikit-learn's ``HistGradientBoosting*`` and ``MLP*`` with their default settings, fitted on
   orch's training + validation rows (the same prepared features) and scored on the same test rows.

Scores: test accuracy (classification), test RMSE in the target's units (regression). Prints a
table per seed and the mean over seeds, and writes them as JSON (--json).

    python bench/quality.py                          # everything (about 40 minutes on 2 cores)
    python bench/quality.py --datasets iris wine --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLASSIFICATION = ROOT / "conf" / "tabular.yaml"
REGRESSION = ROOT / "conf" / "tabular_regression.yaml"
DATASETS = {  # name -> (task, data overrides; None: a synthetic table written to CSV)
    "digits": ("classification", ["data.source=sklearn:digits"]),
    "breast_cancer": ("classification", ["data.source=sklearn:breast_cancer"]),
    "wine": ("classification", ["data.source=sklearn:wine"]),
    "iris": ("classification", ["data.source=sklearn:iris"]),
    "diabetes": ("regression", ["data.source=sklearn:diabetes"]),
    "mixed": ("classification", None),
    "weak": ("regression", None),
}
METHODS = ("orch_best", "orch_fit", "orch_ensemble3", "sk_hgb", "sk_mlp")


def synthetic(name: str, directory: Path) -> list[str]:
    from orchestrator.examples.tables import mixed_classification, weak_regression

    path = directory / f"{name}.csv"
    if name == "mixed":
        mixed_classification(1500, seed=0).to_csv(path, index=False)
        return ["data.source=null", f"data.path={path}", "data.target=label", "data.task=classification"]
    weak_regression(1200, seed=0).to_csv(path, index=False)
    return ["data.source=null", f"data.path={path}", "data.target=y", "data.task=regression"]


def orch(*args: object, log: Path) -> None:
    exe = str(Path(sys.executable).with_name("orch"))
    with log.open("a") as f:
        f.write(f"$ orch {' '.join(map(str, args))}\n")
        f.flush()
        proc = subprocess.run([exe, *map(str, args)], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                              env={**os.environ, "ORCH_NO_REPORT": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"orch {args[0]} failed ({proc.returncode}): {log.read_text().splitlines()[-1]}")


def score(task: str, scores: dict[str, float]) -> float:
    return scores["test_accuracy"] if task == "classification" else scores["test_rmse"]


def baselines(config: Path, overrides: list[str], task: str) -> dict[str, float]:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    from orchestrator.config import load as config_mod
    from orchestrator.train import data as data_mod

    cfg = config_mod.load(config, overrides)
    ds = data_mod.load(cfg)
    x = np.concatenate([ds.x_train, ds.x_val])
    if task == "classification":
        y = np.concatenate([ds.y_train, ds.y_val])
        models = {"sk_hgb": HistGradientBoostingClassifier(random_state=0), "sk_mlp": MLPClassifier(random_state=0)}
    else:
        y = np.concatenate([ds.to_target_units(ds.y_train), ds.y_val_units])
        models = {"sk_hgb": HistGradientBoostingRegressor(random_state=0), "sk_mlp": MLPRegressor(random_state=0)}
    out = {}
    for name, model in models.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)
        pred = model.predict(ds.x_test)
        if task == "classification":
            out[name] = float((pred == ds.y_test).mean())
        else:
            out[name] = float(np.sqrt(np.mean((pred - ds.y_test_units) ** 2)))
    return out


def one(name: str, seed: int, work: Path, budget: float, extra: list[str]) -> dict[str, float]:
    from orchestrator.store.tables import Store

    task, data = DATASETS[name]
    data = data if data is not None else synthetic(name, work)
    config = CLASSIFICATION if task == "classification" else REGRESSION
    study = f"quality-{name}-{seed}"
    store = work / "store"
    overrides = [f"study={study}", *data, f"data.seed={seed}", f"search.seed={seed}",
                 f"search.time_budget_s={budget}", "ray.num_cpus=2", *extra]
    log = work / f"{study}.log"
    t0 = time.perf_counter()
    orch("sweep", config, *overrides, "--store", store, "--no-report", log=log)
    wall = time.perf_counter() - t0
    s = Store(store)
    sweeps = s.sweeps(study)
    row = sweeps.iloc[-1]
    best_dir = store / "models" / study / row["sweep_id"] / row["best_trial_id"]
    best = json.loads((best_dir / "model.json").read_text())["record"]["scores"]["test"]
    orch("fit", study, "--store", store, log=log)
    fit = json.loads((store / "models" / study / row["sweep_id"] / "fit" / "model.json").read_text())
    orch("export", study, "--ensemble", "3", "--out", work / f"{study}-ensemble", "--store", store, log=log)
    ens = json.loads((work / f"{study}-ensemble" / "model.json").read_text())
    result = {"orch_best": score(task, best), "orch_fit": score(task, fit["record"]["scores"]["test"]),
              "orch_ensemble3": score(task, ens["record"]["scores"]["test"]),
              **baselines(config, overrides, task), "sweep_s": wall}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=300.0, help="search.time_budget_s of each sweep")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every sweep (key=value)")
    args = parser.parse_args()
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    results: dict[str, dict[int, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="orch-quality-") as tmp:
        for name in args.datasets:
            for seed in args.seeds:
                work = Path(tmp) / f"{name}-{seed}"
                work.mkdir()
                try:
                    r = one(name, seed, work, args.budget, args.overrides)
                except RuntimeError as err:  # recorded as a miss, and the run goes on
                    print(f"{name:14s} seed {seed}: FAILED: {err}", flush=True)
                    continue
                results.setdefault(name, {})[seed] = r
                print(f"{name:14s} seed {seed}: " + "  ".join(f"{m} {r[m]:.4f}" for m in METHODS)
                      + f"  (sweep {r['sweep_s']:.0f}s)", flush=True)
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1))
    print("\nMean over seeds " + ", ".join(map(str, args.seeds)) + " (accuracy: higher is better; RMSE: lower)")
    print("| dataset | metric | " + " | ".join(METHODS) + " | orch best vs both baselines |")
    print("|---|---|" + "---|" * (len(METHODS) + 1))
    for name, by_seed in results.items():
        task = DATASETS[name][0]
        mean = {m: float(np.mean([r[m] for r in by_seed.values()])) for m in METHODS}
        name = name if len(by_seed) == len(args.seeds) else f"{name} ({len(by_seed)} seeds)"
        base = [mean["sk_hgb"], mean["sk_mlp"]]
        # (Accuracies of float32 and float64 means: equal to 1e-6, far below one test row.)
        ok = (mean["orch_best"] >= max(base) - 1e-6 if task == "classification"
              else mean["orch_best"] <= min(base) + 1e-6)
        metric = "test accuracy" if task == "classification" else "test RMSE"
        print(f"| {name} | {metric} | " + " | ".join(f"{mean[m]:.4f}" for m in METHODS)
              + f" | {'at least as good' if ok else 'MISS'} |")


if __name__ == "__main__":
    main()
