"""A sweep with its store in object storage against the same sweep with a local store, side by side.

The object store is a real S3 API on 127.0.0.1 (moto's server, started here): what it measures
is orch's cost of going through S3 requests (listings, uploads, Tune's syncing of its state and
checkpoints, the trials' weights) rather than a network's latency. Each repeat runs the local and
the S3 sweep one after the other (the order alternates), each ``orch sweep`` a process of its own.
Also timed, in process: appends (one trials and one metrics file, as the driver's writer flushes)
and reading a study back, against each store.

    python bench/s3_store.py [--repeats 3] [--trials 8] [--epochs 5] [--json bench/out/s3_store.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ORCH = [sys.executable, "-m", "orchestrator"]
BUCKET = "orch-bench"


def start_s3() -> tuple[object, dict[str, str]]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return server, env


def sweep(store: str, args: argparse.Namespace, env: dict[str, str]) -> float:
    cmd = [*ORCH, "sweep", str(ROOT / "conf" / "tabular.yaml"), "study=bench-s3", "ray.num_cpus=2",
           f"search.num_samples={args.trials}", f"scheduler.max_epochs={args.epochs}", "scheduler.name=fifo",
           "--no-report", "--store", store]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"orch sweep --store {store} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return took


def appends_and_reads(root: str, batches: int) -> tuple[float, float]:
    """Median seconds of one batch's two appends, and of reading the study's trials back."""
    from orchestrator.store.tables import Store

    store = Store(root)
    times = []
    for b in range(batches):
        trials = [{"sweep_id": "s1", "trial_id": f"t{b}-{i}", "status": "completed", "best_val_loss": 0.1 * i,
                   "config.lr": 1e-3 * (i + 1)} for i in range(5)]
        metrics = [{"sweep_id": "s1", "trial_id": f"t{b}-{i}", "epoch": e, "val_loss": 1.0 / (e + 1)}
                   for i in range(5) for e in range(20)]
        t = time.perf_counter()
        store.append("trials", "bench", trials, "s1")
        store.append("metrics", "bench", metrics, "s1")
        times.append(time.perf_counter() - t)
    reads = []
    for _ in range(5):
        t = time.perf_counter()
        assert len(store.trials("bench")) == 5 * batches
        reads.append(time.perf_counter() - t)
    return statistics.median(times), statistics.median(reads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    server, s3_env = start_s3()
    home = tempfile.mkdtemp(prefix="orch-bench-home-")
    env = {**os.environ, **s3_env, "ORCH_HOME": home, "ORCH_NO_REPORT": "1"}
    env.pop("ORCH_DEBUG", None)
    walls: dict[str, list[float]] = {"local": [], "s3": []}
    try:
        with tempfile.TemporaryDirectory(prefix="orch-bench-s3-") as tmp:
            for r in range(args.repeats):
                stores = {"local": str(Path(tmp) / f"local-{r}"), "s3": f"s3://{BUCKET}/sweep-{r}"}
                for kind in (["local", "s3"] if r % 2 == 0 else ["s3", "local"]):
                    walls[kind].append(sweep(stores[kind], args, env))
                    print(f"repeat {r + 1} {kind}: {walls[kind][-1]:.2f}s", flush=True)
            local_append, local_read = appends_and_reads(str(Path(tmp) / "appends"), args.batches)
            s3_append, s3_read = appends_and_reads(f"s3://{BUCKET}/appends", args.batches)
    finally:
        server.stop()  # type: ignore[attr-defined]
    med = {k: statistics.median(v) for k, v in walls.items()}
    out = {
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": " ".join(["python", "bench/s3_store.py", *sys.argv[1:]]),
        "sweep": f"{args.trials} trials x {args.epochs} epochs, digits MLP, fifo, 2 CPUs",
        "sweep_wall_s": walls, "sweep_median_s": med, "s3_over_local": med["s3"] / med["local"],
        "append_batch_s": {"local": local_append, "s3": s3_append},
        "read_trials_s": {"local": local_read, "s3": s3_read, "rows": 5 * args.batches},
    }
    print(f"\nsweep wall time, median of {args.repeats}: local {med['local']:.2f}s, S3 {med['s3']:.2f}s, "
          f"S3/local {out['s3_over_local']:.2f}")
    print(f"append (trials + metrics file): local {local_append * 1e3:.1f} ms, S3 {s3_append * 1e3:.1f} ms")
    print(f"read a study's trials ({5 * args.batches} rows in {args.batches} files): local "
          f"{local_read * 1e3:.1f} ms, S3 {s3_read * 1e3:.1f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
