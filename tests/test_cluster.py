"""orch on a Ray cluster: a head and worker nodes started by the repo's node scripts (the commands
docker-compose.yml runs), all on 127.0.0.1, with token authentication on and a token of the test's own.

The nodes run as process groups of their own; each test stops (or kills) only the nodes it started.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import Cluster, new_cluster, orch


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    c = new_cluster(tmp_path_factory.mktemp("cluster"), Path(tempfile.mkdtemp(prefix="orch-ray-")),
                    ORCH_STORE_FLUSH_S="1")
    try:
        c.start_head(num_cpus=2, name="head")
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.ray_tmp, ignore_errors=True)


def wait_for(proc: subprocess.Popen, timeout_s: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout_s:.0f}s:\n{out[-4000:]}")
    return out


def trials_of(store: Path, sweep_id: str | None = None) -> pd.DataFrame:
    if not (store / "trials").is_dir():
        return pd.DataFrame()
    try:
        df = pd.read_parquet(store / "trials")
    except (OSError, ValueError):
        return pd.DataFrame()  # a file renamed into place while listing: read again next time
    return df[df["sweep_id"] == sweep_id] if sweep_id and len(df) else df


def sweep_id_of(out: str) -> str:
    m = re.search(r"Sweep (\d{8}-\d{6}-[0-9a-f]{4}) of", out)
    assert m, out
    return m.group(1)


def trial_actors_on(cluster: Cluster, node_id: str) -> int:
    """How many trial actors are alive on a node (Ray's state API)."""
    try:
        actors = cluster.api("/api/v0/actors?limit=1000&detail=1")["data"]["result"]["result"]
    except (OSError, KeyError, ValueError):
        return 0
    return sum(a.get("class_name") == "OrchTrial" and a.get("state") == "ALIVE" and a.get("node_id") == node_id
               for a in actors)


def max_overlap(trials: pd.DataFrame) -> int:
    events = sorted([(t, 1) for t in trials["started_at"]] + [(t, -1) for t in trials["ended_at"]])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.slow
def test_a_sweep_spreads_over_both_nodes_and_survives_losing_one(cluster: Cluster) -> None:
    worker = cluster.add_worker("w1", ORCH_NUM_CPUS="2")
    store = cluster.tmp / "store-failover"
    n, epochs = 10, 30
    proc = cluster.orch("sweep", "conf/tabular.yaml", "--address", cluster.gcs, "--store", str(store),
                        f"search.num_samples={n}", "scheduler.name=fifo", f"scheduler.max_epochs={epochs}",
                        "train.checkpoint_every=2", "failure.max_retries=3", "ray.reuse_actors=false")
    # Kill the worker node once a trial has finished there (so the store shows both nodes) while
    # another trial's actor is alive on it (one actor per trial: that trial is still training).
    deadline = time.monotonic() + 180
    while True:
        trials = trials_of(store)
        if len(trials) and (trials["node"] == worker.node_id).any() and trial_actors_on(cluster, worker.node_id):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no trial finished on the worker node:\n{wait_for(proc, 10)[-4000:]}")
        time.sleep(0.3)
    done_before = len(trials)
    worker.stop(signal.SIGKILL)
    out = wait_for(proc, 300)
    assert proc.returncode == 0, out[-4000:]
    sweep_id = sweep_id_of(out)
    assert "Ray cluster: 2 nodes, 4 CPUs" in out

    trials = trials_of(store, sweep_id)
    assert done_before < n, "the sweep ended before the node was lost: nothing was tested"
    assert len(trials) == n and trials["trial_id"].is_unique, trials[["trial_id", "status", "node"]]
    assert set(trials["status"]) == {"completed"}, trials[["trial_id", "status", "stop_reason"]]
    assert (trials["epochs"] == epochs).all()
    assert {worker.node_id, cluster.head.node_id} <= set(trials["node"])
    retried = trials[trials["retries"] > 0]
    assert len(retried), "no trial was running on the lost node"
    assert set(retried["node"]) == {cluster.head.node_id}  # finished where a node was left
    # Each trial had its own actor, named for its study, sweep and trial in the dashboard.
    actors = cluster.api("/api/v0/actors?limit=1000&detail=1")["data"]["result"]["result"]
    names = {a.get("repr_name") for a in actors if a.get("class_name") == "OrchTrial"}
    assert {f"orch:tabular-digits:{sweep_id}:{t}" for t in trials["trial_id"]} <= names, sorted(names)[:5]
    # Every epoch of every trial is in the store exactly once, the retried ones included.
    metrics = pd.read_parquet(store / "metrics")
    metrics = metrics[metrics["sweep_id"] == sweep_id]
    per_trial = metrics.groupby("trial_id")["epoch"].agg(["count", "nunique", "max"])
    assert (per_trial["count"] == epochs).all() and (per_trial["nunique"] == epochs).all(), per_trial


@pytest.mark.slow
def test_gpu_trials_run_on_gpu_nodes_only_four_to_a_gpu_at_a_quarter(cluster: Cluster) -> None:
    # Ray's GPU resource, declared on a node without one: Ray schedules by it, and a trial that
    # Ray gave a GPU CUDA cannot use trains on the CPU.
    gpu_node = cluster.add_worker("gpu", ORCH_NUM_CPUS="8", ORCH_NUM_GPUS="1")
    store = cluster.tmp / "store-gpu"
    proc = cluster.orch("sweep", "conf/tabular.yaml", "--address", cluster.gcs, "--store", str(store),
                        "search.num_samples=8", "scheduler.name=fifo", "scheduler.max_epochs=40",
                        "resources.gpu_per_trial=0.25")
    out = wait_for(proc, 300)
    assert proc.returncode == 0, out[-4000:]
    trials = trials_of(store, sweep_id_of(out))
    assert len(trials) == 8
    assert set(trials["node"]) == {gpu_node.node_id}, "a GPU trial ran on a node without a GPU"
    assert set(trials["gpu_ids"]) == {"0"}
    assert set(trials["device"]) == {"cuda" if _cuda() else "cpu"}
    # 8 CPUs would run 8 trials at once (10 with the head's): the quarter GPU allows 4.
    assert max_overlap(trials) == 4
    # Reused actors (the default) are named for their study and sweep in the dashboard.
    actors = cluster.api("/api/v0/actors?limit=1000&detail=1")["data"]["result"]["result"]
    sweep_id = trials["sweep_id"].iloc[0]
    names = {a.get("repr_name") for a in actors
             if a.get("class_name") == "OrchTrial" and sweep_id in a.get("repr_name", "")}
    assert names == {f"orch:tabular-digits:{sweep_id}"}, names
    gpu_node.stop()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.slow
def test_submit_runs_the_sweep_as_a_named_ray_job_and_exports_metrics(cluster: Cluster) -> None:
    proc = cluster.orch("submit", "conf/tabular.yaml", "search.num_samples=6", "scheduler.name=fifo",
                        "scheduler.max_epochs=25", "--address", cluster.dashboard)
    out = wait_for(proc, 120)
    assert proc.returncode == 0, out
    m = re.search(r"as Ray Job (orch:tabular-digits:(\S+))", out)
    assert m, out
    name, sweep_id = m.group(1), m.group(2)

    # Ray's Prometheus endpoint carries orch's metrics, labelled with the study, while it runs.
    seen: set[str] = set()
    deadline = time.monotonic() + 150
    wanted = {"ray_orch_trials", "ray_orch_trials_planned", "ray_orch_trial_results_total", "ray_orch_best_objective"}
    ended = None
    while time.monotonic() < deadline and not wanted <= seen:
        url = f"http://127.0.0.1:{cluster.head.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith("ray_orch_") and 'study="tabular-digits"' in line and f'sweep_id="{sweep_id}"' in line:
                seen.add(line.split("{")[0])
        job = cluster.api(f"/api/jobs/{name}")
        if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            ended = ended or time.monotonic()
            if time.monotonic() - ended > 30:  # the last values stay exported a while after the end
                break
        time.sleep(2)
    assert wanted <= seen, seen

    # The Jobs API (with the token) knows it by its name, with orch's metadata.
    deadline = time.monotonic() + 150
    while (job := cluster.api(f"/api/jobs/{name}"))["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, job
        time.sleep(1)
    assert job["status"] == "SUCCEEDED", job.get("message")
    assert job["metadata"]["job_name"] == name
    assert job["metadata"]["orch_sweep_id"] == sweep_id
    assert job["metadata"]["orch_config"] == "conf/tabular.yaml"
    listed = [j for j in cluster.api("/api/jobs/") if j.get("submission_id") == name]
    assert len(listed) == 1

    # Its rows are in the cluster's store ($ORCH_STORE of the head).
    trials = trials_of(cluster.store, sweep_id)
    assert len(trials) == 6
    sweeps = pd.read_parquet(cluster.store / "sweeps")
    assert sweep_id in set(sweeps["sweep_id"])

    # orch status lists it, from the Jobs API.
    status = orch("status", "--all", "--address", cluster.dashboard, "--store",
                  cluster.tmp / "empty", base_env=cluster.env, timeout=60)
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if sweep_id in line)
    assert "succeeded" in row and "6/6" in row and "val_loss" in row


@pytest.mark.slow
def test_submit_with_a_wrong_token_is_one_line_and_exit_2(cluster: Cluster) -> None:
    env = {**cluster.env, "RAY_AUTH_TOKEN": "0" * 64}
    res = orch("submit", "conf/tabular.yaml", "--address", cluster.dashboard, base_env=env,
               timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("orch: error: the Ray dashboard at")
    assert "refused this token" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_sweep_with_a_wrong_token_is_one_line_and_exit_2(cluster: Cluster) -> None:
    env = {**cluster.env, "RAY_AUTH_TOKEN": "0" * 64}
    res = orch("sweep", "conf/tabular.yaml", "--address", cluster.gcs, "--store",
               cluster.tmp / "nothing", base_env=env, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"orch: error: cannot join the Ray cluster at {cluster.gcs}") and "token" in last
    assert "Traceback" not in res.stderr
    assert not (cluster.tmp / "nothing").exists()  # nothing half-written
