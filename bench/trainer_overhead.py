"""What orch's trainer costs over a bare PyTorch loop training the same model on the same batches.

The trainer does more per step and per epoch than the minimal loop (learning-rate schedule,
divergence checks, collapse diagnostics, test scores at reports, checkpoint state); this measures
what that costs. Both clip gradients at norm 1 (orch's default). Both run in this process, one torch
thread, interleaved (A B A B ...) so that noise on a shared machine hits both alike; the figure is the
ratio of medians.

    python bench/trainer_overhead.py                  # digits and a 20k x 40 synthetic table
    python bench/trainer_overhead.py --repeats 5 --json bench/out/trainer_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.config import load as config  # noqa: E402
from orchestrator.config import schema  # noqa: E402
from orchestrator.train import data  # noqa: E402
from orchestrator.train.trainer import TrialSetup, run_trial  # noqa: E402

EPOCHS = 20
HP = {"lr": 1e-3, "batch_size": 64, "hidden": 128, "layers": 2}


def dataset(name: str) -> data.Dataset:
    if name == "digits":
        from sklearn.datasets import load_digits

        frame = load_digits(as_frame=True).frame
        return data.prepare(frame, "target", "classification", seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 40)).astype(np.float32)
    w = rng.normal(size=(40, 4))
    y = (x @ w + 0.5 * rng.normal(size=(20_000, 4))).argmax(1)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(40)])
    frame["y"] = y
    return data.prepare(frame, "y", "classification", seed=0)


def orch_run(ds, base) -> float:
    setup = TrialSetup(base=base, model="mlp", metric="val_loss", mode="min", max_epochs=EPOCHS,
                       report_epochs=frozenset({2, 6, 18, 5, 10, 15, 20}), checkpoint_every=5, threads=1)
    t = time.perf_counter()
    run_trial({}, ds, setup, lambda r, c: None)
    return time.perf_counter() - t


def bare_run(ds, base) -> float:
    """The minimal loop: same model, Adam, cross-entropy, shuffled batches, gradient clipping at the
    same norm, validation loss per epoch."""
    from orchestrator.config import models

    torch.set_num_threads(1)
    t = time.perf_counter()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = models.build("mlp", ds.n_features, ds.n_outputs, hidden=base["hidden"], layers=base["layers"])
    opt = torch.optim.Adam(model.parameters(), lr=base["lr"])
    x, y = torch.as_tensor(ds.x_train), torch.as_tensor(ds.y_train)
    xv, yv = torch.as_tensor(ds.x_val), torch.as_tensor(ds.y_val)
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), base["batch_size"]):
            idx = order[i:i + base["batch_size"]]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), base["grad_clip"])
            opt.step()
        model.eval()
        with torch.no_grad():
            float(F.cross_entropy(model(xv), yv))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--datasets", default="digits,synthetic")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = config.load(ROOT / "conf" / "tabular.yaml")
    # The loss is forced to cross-entropy so that both loops optimise the same thing.
    base = {**schema.base_hyperparameters(cfg), **HP, "loss": "cross_entropy", "grad_clip": 1.0}
    out = {}
    for name in args.datasets.split(","):
        ds = dataset(name)
        orch_run(ds, base), bare_run(ds, base)  # warm up both
        o, b = [], []
        for _ in range(args.repeats):
            o.append(orch_run(ds, base))
            b.append(bare_run(ds, base))
        ratio = statistics.median(o) / statistics.median(b)
        out[name] = {"orch_s": o, "bare_s": b, "ratio": ratio, "rows": len(ds.x_train), "epochs": EPOCHS}
        print(f"{name}: {len(ds.x_train)} training rows, {EPOCHS} epochs: orch trainer median "
              f"{statistics.median(o):.2f}s, bare loop {statistics.median(b):.2f}s, ratio {ratio:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
