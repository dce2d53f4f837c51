"""orch against what a user would run instead, on the same sweep.

The same K configs (drawn from the default search space, ``search_spaces/mlp_adam.yaml``) x E
epochs on ``digits``, every one trained by orch's own trainer (``orchestrator.train.trainer.run_trial``)
with the same data and settings, run by each peer, side by side in one invocation. Each peer is its
own process (or, for ``orch`` and ``orch-warm``, the ``orch`` command), timed from launch, Python
start-up included, to exit:

* ``pool``: a bare ``multiprocessing.Pool(2)`` (bench/sweep_overhead.py's);
* ``optuna-threads``: Optuna, ``n_jobs=2`` (threads, one interpreter), no pruning; trial ``i`` runs
  config ``i`` (enqueued with ``study.enqueue_trial``);
* ``optuna-journal``: Optuna with two worker processes sharing a ``JournalStorage`` file
  (``JournalFileBackend``), the configs enqueued likewise, no pruning;
* ``ray-tune``: plain Ray Tune: ``tune.Tuner`` with a function trainable calling the same trainer,
  ``tune.grid_search`` over the list of configs, ``reuse_actors=True``, ``ray.init(num_cpus=2,
  include_dashboard=False)`` on 127.0.0.1, ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``; the trainable
  calls ``tune.report`` after every epoch (``--ray-tune-report end``: once, at the end);
* ``orch``: ``orch sweep`` as a user runs it, its Ray embedded (started and stopped by the sweep),
  scheduler ``fifo``, the configs as ``search.points_to_evaluate`` (as bench/sweep_overhead.py);
* ``orch-warm``: the same ``orch sweep`` while a persistent local Ray started by ``orch up
  --num-cpus 2`` runs (started before the timing and stopped with ``orch down`` after, neither
  counted). Skipped, with a message, where this orch has no ``orch up``.

Both orch peers run with ``ORCH_HOME`` in the benchmark's own directory, so ``orch sweep`` joins no
warm Ray but the one this script started, and ``orch down`` stops only that one.

Every peer must train to the same numbers: the table shows each peer's best final val_loss and the
largest difference from ``pool``'s of any config's final val_loss. Repeats alternate the peers'
order (forwards, backwards, ...) and the medians are shown.

    python bench/peers.py                                   # 32x20 and 64x30, every peer
    python bench/peers.py --sizes 4x2                       # a smoke check
    python bench/peers.py --sizes 32x20 --peers pool,orch,ray-tune --repeats 3 --json bench/out/peers.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from sweep_overhead import _finite, orch_losses, sample_configs, write_config  # noqa: E402

PEERS = ("pool", "optuna-threads", "optuna-journal", "ray-tune", "orch", "orch-warm")
ORCH = str(Path(sys.executable).with_name("orch"))
WORKERS = 2  # processes, threads or CPUs of every peer


# Why a peer may not train to the same numbers as the others.
WHY_DIFFERENT = {
    "optuna-threads": "its two threads share one process's random state (torch's, numpy's), which each trial "
                      "seeds as it starts: two trials at once draw their initial weights and dropout masks "
                      "from each other's stream",
}


class PeerFailed(Exception):
    pass


# -- shared by the workers ---------------------------------------------------------------------------


def load(config: str) -> tuple:
    """The sweep config's data, its trials' setup and the configs, as ``orch sweep`` compiles them."""
    from orchestrator.config import load as config_mod
    from orchestrator.train import data as data_mod
    from orchestrator.tune.compile import compile_sweep

    cfg = config_mod.load(config)
    data = data_mod.load(cfg)
    return data, compile_sweep(cfg, data).setup, list(cfg.search.points_to_evaluate)


def _quiet(_result: dict, _checkpoint: dict | None) -> None:
    pass


def _final(result: dict) -> float:
    v = result.get("val_loss")
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _write(out: str, losses: list[float]) -> None:
    Path(out).write_text(json.dumps(losses))


# -- Optuna, threads ------------------------------------------------------------------------------


def optuna_threads(config: str, out: str) -> None:
    import optuna

    from orchestrator.train.trainer import run_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data, setup, points = load(config)
    losses = [float("nan")] * len(points)

    def objective(trial: optuna.Trial) -> float:
        i = trial.suggest_int("config", 0, len(points) - 1)
        losses[i] = _final(run_trial(points[i], data, setup, _quiet))
        return losses[i]

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0),
                                pruner=optuna.pruners.NopPruner())
    for i in range(len(points)):
        study.enqueue_trial({"config": i})
    study.optimize(objective, n_trials=len(points), n_jobs=WORKERS)
    _write(out, losses)


# -- Optuna, two processes on a journal file ---------------------------------------------------------

_JOURNAL: dict = {}


def _journal_worker(path: str, n: int) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from orchestrator.train.trainer import run_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data, setup, points = _JOURNAL["data"], _JOURNAL["setup"], _JOURNAL["points"]

    def objective(trial: optuna.Trial) -> float:
        i = trial.suggest_int("config", 0, len(points) - 1)
        loss = _final(run_trial(points[i], data, setup, _quiet))
        trial.set_user_attr("val_loss", loss)
        return loss

    study = optuna.load_study(study_name="peers", storage=JournalStorage(JournalFileBackend(path)),
                              sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner())
    # Stop once every enqueued trial is taken (running or done): the other worker may hold the last.
    taken = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    study.optimize(objective, callbacks=[MaxTrialsCallback(n, states=taken)])


def optuna_journal(config: str, out: str) -> None:
    import multiprocessing as mp

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data, setup, points = load(config)
    _JOURNAL.update(data=data, setup=setup, points=points)
    path = str(Path(out).with_suffix(".journal"))
    storage = JournalStorage(JournalFileBackend(path))
    study = optuna.create_study(study_name="peers", storage=storage, direction="minimize")
    for i in range(len(points)):
        study.enqueue_trial({"config": i})
    ctx = mp.get_context("fork")
    workers = [ctx.Process(target=_journal_worker, args=(path, len(points))) for _ in range(WORKERS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if any(w.exitcode for w in workers):
        sys.exit(f"a journal worker failed: exit codes {[w.exitcode for w in workers]}")
    losses = [float("nan")] * len(points)
    for t in optuna.load_study(study_name="peers", storage=storage).trials:
        if "config" in t.params and "val_loss" in t.user_attrs:
            losses[t.params["config"]] = t.user_attrs["val_loss"]
    _write(out, losses)


# -- plain Ray Tune -----------------------------------------------------------------------------------


def _tune_trainable(config: dict, data=None, setup=None, every_epoch: bool = True) -> None:
    from ray import tune

    from orchestrator.train.trainer import run_trial

    def scalars(result: dict) -> dict:
        return {k: v for k, v in result.items() if isinstance(v, (int, float))}

    if every_epoch:
        run_trial(config["point"], data, setup, lambda result, _checkpoint: tune.report(scalars(result)))
    else:
        tune.report(scalars(run_trial(config["point"], data, setup, _quiet)))


def ray_tune(config: str, out: str, report: str) -> None:
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # (no network from a benchmark)
    import ray
    from ray import tune

    from orchestrator.tune import connect

    data, setup, points = load(config)
    every_epoch = report == "epoch"
    if every_epoch:
        # Every epoch reaches Tune; checkpoints stay where orch's trainer puts them (every 5 epochs,
        # not stored: Tune is given none).
        setup = dataclasses.replace(setup, report_epochs=frozenset(range(1, setup.max_epochs + 1)))
    # On 127.0.0.1 alone: Ray would otherwise swap a loopback address for the machine's outward one
    # (orch's fix for it, as orch's own sweeps use it).
    connect.keep_loopback()
    ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        tuner = tune.Tuner(
            tune.with_parameters(_tune_trainable, data=data, setup=setup, every_epoch=every_epoch),
            param_space={"point": tune.grid_search(points)},
            tune_config=tune.TuneConfig(metric="val_loss", mode="min", reuse_actors=True),
            run_config=tune.RunConfig(name="peers", storage_path=str(Path(out).parent / "ray_results"), verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    by_lr = {r.config["point"]["lr"]: float(r.metrics.get("val_loss", float("nan"))) for r in grid if r.metrics}
    _write(out, [by_lr.get(p["lr"], float("nan")) for p in points])


# -- the peers, timed -------------------------------------------------------------------------------


def timed(cmd: list[str], log: Path, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise PeerFailed(f"exit {proc.returncode}; see {log}")
    return elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orch_up_available() -> bool:
    return subprocess.run([ORCH, "up", "--help"], capture_output=True, cwd=ROOT).returncode == 0


def run_peer(peer: str, points: list[dict], config: Path, warm_config: Path, work: Path, tag: str,
             report: str) -> tuple[float, list]:
    """One run of ``peer``: its wall time and each config's final val_loss, in the configs' order."""
    log = work / f"{tag}.log"
    if peer in ("orch", "orch-warm"):
        store = work / f"{tag}-store"
        shutil.rmtree(store, ignore_errors=True)
        # orch's own directory for this benchmark alone: `orch sweep` joins only the warm Ray this
        # script started (never another one of this user's), and `orch down` stops only that one.
        env = {**os.environ, "ORCH_HOME": str(work / "orch-home")}
        sweep = [ORCH, "sweep", str(config if peer == "orch" else warm_config), "--store", str(store), "--no-report"]
        if peer == "orch":
            wall = timed(sweep, log, env)
        else:
            # Ports free now (not Ray's defaults, which other Rays on this machine may be taking).
            ports = ["--port", str(free_port()), "--dashboard-port", str(free_port())]
            up = subprocess.run([ORCH, "up", "--num-cpus", str(WORKERS), *ports], cwd=ROOT, capture_output=True,
                                text=True, env=env)
            (work / f"{tag}-up.log").write_text(up.stdout + up.stderr)
            if up.returncode != 0:
                last = ((up.stderr or up.stdout).strip().splitlines() or [""])[-1]
                raise PeerFailed(f"orch up failed (exit {up.returncode}): {last}; see {work / f'{tag}-up.log'}")
            try:
                wall = timed(sweep, log, env)
            finally:
                down = subprocess.run([ORCH, "down"], cwd=ROOT, capture_output=True, text=True, env=env)
                (work / f"{tag}-down.log").write_text(down.stdout + down.stderr)
                if down.returncode != 0:
                    print(f"  warning: orch down failed (exit {down.returncode}); see {work / f'{tag}-down.log'}",
                          flush=True)
        return wall, orch_losses(store, points)
    out = work / f"{tag}.json"
    if peer == "pool":
        cmd = [sys.executable, str(ROOT / "bench" / "sweep_overhead.py"), "_pool", str(config), str(out)]
    else:
        cmd = [sys.executable, __file__, "_worker", peer, str(config), str(out), report]
    wall = timed(cmd, log)
    return wall, json.loads(out.read_text())


def max_diff(a: list[float], b: list[float]) -> float:
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if _finite(x) or _finite(y)]
    return max(((abs(x - y) if _finite(x) and _finite(y) else math.inf) for x, y in pairs), default=0.0)


def run_size(configs: int, epochs: int, peers: list[str], repeats: int, work: Path, report: str,
             warm_skip: str | None) -> dict:
    name = f"{configs}x{epochs}"
    points = sample_configs(configs, 0)
    config, warm_config = work / f"{name}.yaml", work / f"{name}-warm.yaml"
    write_config(config, points, epochs, {"ray": {"num_cpus": WORKERS}})
    write_config(warm_config, points, epochs)  # (the persistent Ray's CPUs are orch up's)
    walls: dict[str, list[float]] = {p: [] for p in peers}
    losses: dict[str, list[float]] = {}
    skipped: dict[str, str] = {}
    if warm_skip and "orch-warm" in peers:
        skipped["orch-warm"] = warm_skip
    for r in range(repeats):
        order = peers if r % 2 == 0 else peers[::-1]
        for peer in order:
            if peer in skipped:
                continue
            try:
                wall, losses[peer] = run_peer(peer, points, config, warm_config, work, f"{name}-{peer}-{r}",
                                                   report)
            except PeerFailed as err:
                skipped[peer] = f"failed: {err}"
                print(f"  {name} #{r + 1} {peer}: {skipped[peer]}", flush=True)
                continue
            walls[peer].append(wall)
            print(f"  {name} #{r + 1} {peer}: {wall:.1f}s", flush=True)
    ref = "pool" if "pool" in losses else next(iter(losses), None)
    rows: dict[str, dict] = {}
    for peer in peers:
        if peer in skipped:
            rows[peer] = {"skipped": skipped[peer], "all_wall_s": walls[peer]}
            continue
        finite = [v for v in losses[peer] if _finite(v)]
        rows[peer] = {"wall_s": statistics.median(walls[peer]), "all_wall_s": walls[peer],
                      "best_val_loss": min(finite) if finite else None,
                      "max_abs_val_loss_diff": max_diff(losses[peer], losses[ref]),
                      "final_val_loss": losses[peer]}
    base = rows.get("pool", {}).get("wall_s")
    for row in rows.values():
        row["ratio_to_pool"] = row["wall_s"] / base if base and "wall_s" in row else None
    return {"configs": configs, "epochs": epochs, "repeats": repeats, "reference": ref, "peers": rows}


def table(name: str, res: dict, report: str) -> str:
    ref = res["reference"]
    lines = [f"{res['configs']} configs x {res['epochs']} epochs on digits, {WORKERS} workers, "
             f"median of {res['repeats']} run(s); ray-tune reports {'every epoch' if report == 'epoch' else 'once'}",
             f"| peer | wall (s) | / pool | best val_loss | max abs val_loss diff vs {ref} |",
             "|---|---|---|---|---|"]
    for peer, r in res["peers"].items():
        if "skipped" in r:
            lines.append(f"| {peer} | skipped (below) | | | |")
            continue
        ratio = f"{r['ratio_to_pool']:.2f}x" if r["ratio_to_pool"] else ""
        best = f"{r['best_val_loss']:.6f}" if r["best_val_loss"] is not None else "none"
        lines.append(f"| {peer} | {r['wall_s']:.1f} | {ratio} | {best} | {r['max_abs_val_loss_diff']:.2g} |")
    lines += [f"{peer}: skipped: {r['skipped']}" for peer, r in res["peers"].items() if "skipped" in r]
    differ = [p for p, r in res["peers"].items() if r.get("max_abs_val_loss_diff", 0) > 1e-6]
    if differ:
        lines.append(f"not the same training as {ref}: {', '.join(differ)}")
        lines += [f"  {p}: {WHY_DIFFERENT[p]}" for p in differ if p in WHY_DIFFERENT]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="32x20,64x30", help="CONFIGSxEPOCHS, comma-separated (default 32x20,64x30)")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"a subset of {','.join(PEERS)} (default all)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each peer; the peers' order alternates")
    ap.add_argument("--ray-tune-report", choices=("epoch", "end"), default="epoch",
                    help="ray-tune's trainable reports every epoch (default) or once at the end")
    ap.add_argument("--logs", type=Path, help="keep every run's log, config and store here (default: a temporary "
                                              "directory, removed)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if unknown or not peers:
        ap.error(f"--peers: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PEERS)}")
    try:
        sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
        if any(len(s) != 2 or min(s) < 1 for s in sizes):
            raise ValueError
    except ValueError:
        ap.error(f"--sizes: '{args.sizes}' is not CONFIGSxEPOCHS[,CONFIGSxEPOCHS...] (e.g. 32x20,64x30)")

    warm_skip = None
    if "orch-warm" in peers and not orch_up_available():
        warm_skip = "this orch has no `orch up` (orch up --help fails)"
        print(f"orch-warm: skipped: {warm_skip}", flush=True)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}", flush=True)
    figures: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": platform.platform(),
                     "cpus": os.cpu_count(), "ray_tune_report": args.ray_tune_report, "sizes": {}}
    tmp = None
    if args.logs:
        work = args.logs
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="orch-peers-")
        work = Path(tmp.name)
    try:
        for configs, epochs in sizes:
            name = f"{configs}x{epochs}"
            print(f"{name}: {configs} configs x {epochs} epochs, peers {', '.join(peers)}", flush=True)
            figures["sizes"][name] = run_size(configs, epochs, peers, args.repeats, work, args.ray_tune_report,
                                              warm_skip)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print()
    for name, res in figures["sizes"].items():
        print(table(name, res, args.ray_tune_report) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "_worker":
        _, _, peer, config, out, report = sys.argv
        if peer == "optuna-threads":
            optuna_threads(config, out)
        elif peer == "optuna-journal":
            optuna_journal(config, out)
        elif peer == "ray-tune":
            ray_tune(config, out, report)
        else:
            sys.exit(f"no worker for {peer}")
    else:
        main()
