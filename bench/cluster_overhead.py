"""What does running on a cluster cost, against the embedded Ray?

The same sweep (the same configs, ``fifo``, so every trial runs its full budget) four ways, side by
side in one run, each ``orch sweep`` a subprocess timed from launch:

* ``embedded``: the default, an embedded Ray of 2 CPUs, trial actors reused;
* ``embedded-own-actors``: the same with ``ray.reuse_actors=false`` (one actor per trial, as on a cluster);
* ``cluster-own-actors``: a head and a worker node of 1 CPU each, started by ``deploy/ray-head``
  and ``deploy/ray-worker`` on 127.0.0.1 (token auth on), the sweep joining with ``--address``,
  one actor per trial;
* ``cluster``: the same cluster with actors reused (the default).

The cluster's start-up is not in its figures (it is started once, before); the embedded Ray's is
(it starts with every sweep), so the comparison is "a sweep on a running cluster" against "a
sweep on this machine". Ratios matter, not seconds.

    python bench/cluster_overhead.py [--trials 32] [--epochs 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from sweep_overhead import sample_configs, write_config  # noqa: E402

ORCH = str(Path(sys.executable).with_name("orch"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(script: str, env: dict, log: Path) -> subprocess.Popen:
    ports = " ".join(f"--{k} {free_port()}" for k in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                       "runtime-env-agent-port", "node-manager-port",
                                                       "object-manager-port"))
    env = {**env, "ORCH_RAY_ARGS": ports + env.pop("EXTRA", ""), "ORCH_METRICS_PORT": str(free_port())}
    with open(log, "w") as out:
        return subprocess.Popen([str(ROOT / "deploy" / script)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def alive_nodes(dashboard: str, token: str) -> int:
    req = urllib.request.Request(dashboard + "/api/v0/nodes", headers={"Authorization": f"Bearer {token}"})
    try:
        nodes = json.load(urllib.request.urlopen(req, timeout=5))["data"]["result"]["result"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(n["state"] == "ALIVE" for n in nodes)


def timed_sweep(config: Path, store: Path, env: dict, *args: str) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([ORCH, "sweep", str(config), "--store", str(store), "--no-report", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"orch sweep failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    config = tmp / "bench.yaml"
    write_config(config, sample_configs(a.trials, seed=1), a.epochs)
    token = tmp / "token"
    subprocess.run([str(ROOT / "deploy" / "make-token"), str(token)], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ORCH_"))}
    env.update(RAY_AUTH_TOKEN_PATH=str(token), ORCH_PYTHON=sys.executable,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    gcs, dash = free_port(), free_port()
    dashboard = f"http://127.0.0.1:{dash}"
    head = node("ray-head", {**env, "ORCH_RAY_PORT": str(gcs), "ORCH_DASHBOARD_PORT": str(dash), "ORCH_NUM_CPUS": "1",
                             "ORCH_TEMP_DIR": str(tmp / "rh"), "EXTRA": f" --ray-client-server-port {free_port()}"},
                tmp / "head.log")
    worker = None
    results: dict[str, list[float]] = {}
    try:
        t0 = time.monotonic()
        while alive_nodes(dashboard, token.read_text().strip()) < 1:
            if time.monotonic() - t0 > 90:
                raise SystemExit((tmp / "head.log").read_text()[-3000:])
            time.sleep(0.5)
        worker = node("ray-worker", {**env, "ORCH_HEAD_ADDRESS": f"127.0.0.1:{gcs}", "ORCH_NUM_CPUS": "1",
                                     "ORCH_TEMP_DIR": str(tmp / "rw")}, tmp / "worker.log")
        while alive_nodes(dashboard, token.read_text().strip()) < 2:
            if time.monotonic() - t0 > 150:
                raise SystemExit((tmp / "worker.log").read_text()[-3000:])
            time.sleep(0.5)
        ways = {
            "embedded": ["ray.num_cpus=2"],
            "embedded-own-actors": ["ray.num_cpus=2", "ray.reuse_actors=false"],
            "cluster-own-actors": ["--address", f"127.0.0.1:{gcs}", "ray.reuse_actors=false"],
            "cluster": ["--address", f"127.0.0.1:{gcs}"],
        }
        for repeat in range(2):
            for name, args in ways.items():
                s = timed_sweep(config, tmp / f"store-{name}-{repeat}", env, *args)
                results.setdefault(name, []).append(s)
                print(f"{name:22s} repeat {repeat}: {s:6.1f} s", flush=True)
    finally:
        for proc in (worker, head):
            if proc is not None:
                stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    base = min(results["embedded"])
    print(f"\n{a.trials} trials x {a.epochs} epochs, fifo; best of 2 repeats; ratio to the embedded Ray")
    print("| way | wall (s), repeats | best / embedded |")
    print("|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {', '.join(f'{r:.1f}' for r in runs)} | {min(runs) / base:.2f}x |")
    own = (min(results["embedded-own-actors"]) - base) / a.trials
    print(f"\nan actor per trial costs {own * 1000:.0f} ms per trial on the embedded Ray")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"trials": a.trials, "epochs": a.epochs, "seconds": results,
                                      "machine": platform.platform(), "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
