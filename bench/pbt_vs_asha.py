"""PBT against ASHA on digits with the same wall-time budget, and a fixed run of ASHA's best config.

Three runs, one after the other on the same machine:

1. ASHA: `orch sweep conf/tabular.yaml` (random search, ASHA, up to 30 epochs per trial), as many
   trials as fit in the budget (`search.time_budget_s`).
2. PBT: `orch sweep conf/tabular_pbt.yaml` (a population of 16, the same search space, an
   exploit/explore step every 3 epochs), up to 60 epochs per trial, in the same budget.
3. Fixed: the best ASHA trial's hyperparameters, trained again from scratch for 30 epochs with the
   same trainer, without Ray: what ASHA's answer is worth as a constant config.

Reported: each run's best validation loss (at the trial's best epoch), the validation loss and the
test loss of the model the trial ended with (the test split is never used to choose, so it is the
fair comparison), and the learning-rate schedule PBT found for its best trial.

    python bench/pbt_vs_asha.py                    # 120 s budget each
    python bench/pbt_vs_asha.py --budget 60 --json bench/out/pbt_vs_asha.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.config import schema

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORCH = str(Path(sys.executable).with_name("orch"))


def sweep(config: str, store: Path, *overrides: str) -> float:
    t = time.monotonic()
    p = subprocess.run([ORCH, "sweep", config, *overrides, "--store", str(store), "--no-report"], cwd=ROOT,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"orch sweep {config} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return time.monotonic() - t


def best_row(store: Path):
    from orchestrator.store.tables import Store

    trials = Store(store).trials()
    ok = trials[trials["status"].isin(["completed", "stopped_early"]) & ~trials["collapsed"].fillna(False).astype(bool)]
    return ok.sort_values("best_val_loss").iloc[0], len(trials)


def fixed_run(row, epochs: int) -> dict:
    """ASHA's best config, trained again alone (no Ray), with the sweep's own trainer."""
    from orchestrator.config import load as config
    from orchestrator.train import data
    from orchestrator.train.trainer import TrialSetup, run_trial

    cfg = config.load(ROOT / "conf" / "tabular.yaml")
    base = schema.base_hyperparameters(cfg)
    point = {k[7:]: (v.item() if hasattr(v, "item") else v) for k, v in row.items()
             if k.startswith("config.") and k[7:] in base and v is not None and v == v}
    setup = TrialSetup(base=base, model="mlp", metric="val_loss", mode="min", max_epochs=epochs,
                       report_epochs=frozenset({epochs}), checkpoint_every=epochs + 1, threads=1)
    t = time.monotonic()
    result = run_trial(point, data.load(cfg), setup, lambda r, c: None)
    return {"best_val_loss": result["best"]["val_loss"], "final_val_loss": result["val_loss"],
            "test_loss": result["test"]["test_loss"], "seconds": time.monotonic() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=120.0, help="wall-time budget of each sweep (s)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from orchestrator.store import queries

    out: dict = {"budget_s": args.budget}
    with tempfile.TemporaryDirectory() as tmp:
        asha, pbt = Path(tmp) / "asha", Path(tmp) / "pbt"
        t_asha = sweep("conf/tabular.yaml", asha, f"search.time_budget_s={args.budget}", "search.num_samples=5000")
        t_pbt = sweep("conf/tabular_pbt.yaml", pbt, f"search.time_budget_s={args.budget}", "scheduler.max_epochs=60")
        a, n_a = best_row(asha)
        p, n_p = best_row(pbt)
        fixed = fixed_run(a, 30)
        _, segments = queries.pbt_history(pbt, p["trial_id"])
    out["asha"] = {"trials": n_a, "wall_s": t_asha, "best_val_loss": float(a["best_val_loss"]),
                   "final_val_loss": float(a["final_val_loss"]), "test_loss": float(a["test_loss"]),
                   "lr": float(a["config.lr"]), "epochs": int(a["epochs"])}
    out["pbt"] = {"trials": n_p, "wall_s": t_pbt, "best_val_loss": float(p["best_val_loss"]),
                  "final_val_loss": float(p["final_val_loss"]), "test_loss": float(p["test_loss"]),
                  "epochs": int(p["epochs"]),
                  "lr_schedule": [{"epochs": s["epochs"], "lr": s["config"].get("lr"),
                                   "batch_size": s["config"].get("batch_size")} for s in segments]}
    out["fixed_best_asha_config"] = fixed
    print(f"Budget {args.budget:.0f}s per sweep (wall time of the whole command: ASHA {t_asha:.0f}s, PBT {t_pbt:.0f}s)")
    print(f"{'run':<28}{'trials':>7}{'best val_loss':>15}{'final val_loss':>16}{'test_loss':>11}")
    for name, n, r in (("ASHA (random search)", n_a, out["asha"]), ("PBT (population 16)", n_p, out["pbt"]),
                       ("fixed: best ASHA config", 1, fixed)):
        print(f"{name:<28}{n:>7}{r['best_val_loss']:>15.4f}{r['final_val_loss']:>16.4f}{r['test_loss']:>11.4f}")
    print(f"PBT's best trial {p['trial_id']} ({int(p['epochs'])} epochs), its schedule:")
    for s in out["pbt"]["lr_schedule"]:
        print(f"  epochs {s['epochs'][0]:>3}-{s['epochs'][1]:<3} lr {s['lr']:.3g}  batch_size {s['batch_size']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
