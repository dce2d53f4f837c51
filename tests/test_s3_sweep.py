"""Sweeps with the results store in object storage: a real S3 API (moto's server on 127.0.0.1).

The store, Tune's experiment state and checkpoints, the trials' weights and the best files all go
to the bucket; nothing is written to a local path named like the URI. A driver killed with
SIGKILL is resumed from the state in the bucket.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from orchestrator.store.tables import Store
from tests.conftest import CONFIG, S3, SMALL, cli, kill_driver_at, new_cluster, orch, start_sweep

N = 4
ARGS = [*SMALL, "study=s3-iris", f"search.num_samples={N}", "scheduler.max_epochs=3"]


def _prefix(uri: str) -> str:
    return uri.split("/", 3)[3]


@pytest.mark.slow
def test_a_sweep_writes_its_store_state_and_weights_to_s3_and_reads_them_back(
        s3_server: S3, s3_store: str, tmp_path: Path) -> None:
    p = orch("sweep", CONFIG, *ARGS, "--store", s3_store, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    keys = s3_server.keys(_prefix(s3_store) + "/")
    sweep_id = next(k.split("/")[2] for k in keys if "/_ray/" in k and k.split("/")[2])
    for wanted in ("trials/study=s3-iris/", "metrics/study=s3-iris/", "sweeps/study=s3-iris/",
                   f"_ray/{sweep_id}/tuner.pkl", f"_ray/{sweep_id}/orch_state.sig",
                   f"_ray/{sweep_id}/orch_sweep.yaml", "best/s3-iris.yaml"):
        assert any(f"{_prefix(s3_store)}/{wanted}" in k for k in keys), (wanted, keys)
    assert any("/experiment_state-" in k for k in keys)
    # Nothing written locally under a path made from the URI.
    assert not list(tmp_path.glob("s3*")) and not Path("s3:").exists()

    trials = Store(s3_store).trials("s3-iris")
    assert len(trials) == N and set(trials["sweep_id"]) == {sweep_id}
    assert len(Store(s3_store).metrics("s3-iris")) >= N

    results = orch("results", "--store", s3_store, "--study", "s3-iris")
    assert results.returncode == 0, results.stderr
    assert sweep_id in results.stdout
    best = orch("best", "s3-iris", "--store", s3_store)
    assert best.returncode == 0, best.stderr
    assert "lr" in best.stdout


def test_a_store_uri_that_cannot_be_used_is_one_line_and_exit_2(s3_server: S3) -> None:
    p = cli("sweep", CONFIG, *ARGS, "--store", "s3://no-such-bucket-orch/x")
    assert p.code == 2, p.stdout + p.stderr + p.detail
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-bucket-orch" in lines[0] and "Traceback" not in p.stderr
    assert "Ray" not in p.stdout  # refused before Ray started
    p = cli("sweep", CONFIG, *ARGS, "--store", "ftp://host/x")
    assert p.code == 2 and "unknown scheme 'ftp'" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_sweep_on_s3_killed_with_sigkill_resumes_from_the_bucket(s3_server: S3, s3_store: str,
                                                                   tmp_path: Path) -> None:
    n = 6
    args = [*SMALL, "study=s3-resume", "scheduler.name=fifo", "scheduler.max_epochs=6", f"search.num_samples={n}",
            "search.max_concurrent=1", "train.checkpoint_every=2", "train.keep_checkpoints=null"]
    env = {"ORCH_STATE_KEY_FILE": str(tmp_path / "keys" / "state.key"), "ORCH_STATE_KEY": "",
           "ORCH_STORE_FLUSH_S": "0"}
    store = Store(s3_store)

    def some_trials_and_saved_state() -> bool:
        try:
            done = len(store.trials("s3-resume"))
        except Exception:  # noqa: BLE001 - nothing written yet
            return False
        saved = [k for k in s3_server.keys(_prefix(s3_store) + "/_ray/") if "/experiment_state-" in k]
        return 1 <= done < n and bool(saved)

    proc = start_sweep([*args, "--store", s3_store], env=env)
    kill_driver_at(proc, some_trials_and_saved_state)
    before = store.trials("s3-resume")
    assert 1 <= len(before) < n

    p = orch("sweep", CONFIG, *args, "--resume", "--store", s3_store, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Resuming sweep" in p.stdout
    trials = store.trials("s3-resume")
    assert len(trials) == n and trials["trial_id"].is_unique
    assert set(before["trial_id"]) <= set(trials["trial_id"])
    sweeps = store.sweeps("s3-resume")
    assert len(sweeps) == 1
    status = json.loads((store.sweep_dir(sweeps["sweep_id"][0]) / "orch_status.json").read_text())
    assert status["state"] == "ended", status
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_orch_submit_to_a_cluster_whose_store_is_in_s3_shares_no_filesystem(s3_server: S3, s3_store: str,
                                                                              tmp_path: Path) -> None:
    """A head that offers no CPUs and a worker, each with a Ray directory of its own, the store
    only in the bucket (the head's $ORCH_STORE): the job's trials run on the worker, and every
    row, Tune's state and the best config land in the bucket."""
    cluster = new_cluster(tmp_path, Path(tempfile.mkdtemp(prefix="orch-ray-")), ORCH_STORE=s3_store,
                          ORCH_STORE_FLUSH_S="1")
    try:
        cluster.start_head(num_cpus=0, name="head")
        cluster.add_worker("worker", ORCH_NUM_CPUS="2")
        proc = cluster.orch("submit", "conf/tabular.yaml", "study=s3-submit", "search.num_samples=4",
                            "scheduler.name=fifo", "scheduler.max_epochs=3", "data.source=sklearn:iris",
                            "--address", cluster.dashboard, "--follow")
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        sweep_id = re.search(r"as Ray Job orch:s3-submit:(\S+)", out).group(1)
    finally:
        cluster.stop()
        shutil.rmtree(cluster.ray_tmp, ignore_errors=True)
    trials = Store(s3_store).trials("s3-submit", sweep_id=sweep_id)
    assert len(trials) == 4
    keys = s3_server.keys(_prefix(s3_store) + "/")
    assert any(f"/_ray/{sweep_id}/experiment_state-" in k for k in keys)
    assert any(k.endswith("/best/s3-submit.yaml") for k in keys)
    assert not (tmp_path / "store").exists()
