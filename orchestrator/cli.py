"""The ``orch`` command line: a table of commands, each parsing its arguments and calling one function.

User errors (bad config, bad argument, missing file) print one line and exit 2; failures at run
time exit 1; Ctrl-C exits 130 and SIGTERM 143, at any moment (orchestrator/tune/stopping.py).
``--debug`` (or ``ORCH_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestrator.errors import OrchError, UserError

if TYPE_CHECKING:
    from orchestrator.config.schema import SweepConfig

NO_REPORT = click.option("--no-report", is_flag=True, default=lambda: os.environ.get("ORCH_NO_REPORT") == "1",
                         help="Do not write the report (orch report) after a sweep. Default from $ORCH_NO_REPORT=1.")
STORE_HELP = ("Results store: a directory, or s3://bucket/prefix (default: the config's store.path, "
              "else $ORCH_STORE, else results/).")


def _store_root(store: str | None) -> Path:
    """``--store`` (else $ORCH_STORE, else results/) as a path: a local Path, or an ObjectPath. A
    store in object storage is asked once here, so that an endpoint that does not answer or
    refused credentials are one line (exit 2) before the command does anything."""
    from orchestrator.errors import StoreError
    from orchestrator.store import fs
    from orchestrator.store.tables import store_root

    root = store_root(None, store)
    if fs.is_remote(root):
        try:
            fs.names(root)
        except StoreError as err:
            raise UserError(f"store: {err} (--store or $ORCH_STORE)") from None
    return root


class OrchGroup(click.Group):
    """Turns orch's errors into one line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        from orchestrator.tune import stopping

        # SIGTERM: the same clean stop as Ctrl-C, at any moment (exit status 143).
        with stopping.installed():
            try:
                return super().invoke(ctx)
            except OrchError as err:
                if _debug(ctx):
                    traceback.print_exc()
                click.echo(f"orch: error: {err}", err=True)
                sys.exit(err.exit_code)
            except KeyboardInterrupt:
                click.echo(stopping.message(), err=True)
                sys.exit(stopping.exit_code())


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get("ORCH_DEBUG") == "1"


@click.group(cls=OrchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="orch", prog_name="orch")
def main(debug: bool) -> None:
    """orch: hyperparameter sweeps for PyTorch models on Ray Tune."""
    if not (debug or os.environ.get("ORCH_DEBUG") == "1"):
        import warnings

        # orch's own warnings as one line each, without the source line that raised them.
        warnings.formatwarning = lambda message, category, *args, **kwargs: f"orch: warning: {message}\n"


@main.command()
@click.argument("directory", default=".", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite the project's files where they exist.")
def init(directory: Path, force: bool) -> None:
    """Write a starter project into DIRECTORY (default: here) that `orch sweep conf/sweep.yaml` runs as is.

    conf/sweep.yaml (a small sweep on scikit-learn's bundled digits), search_spaces/, models/net.py
    (a model factory), train.py (a training loop) and a README.md. Overwrites nothing without --force.
    """
    import shlex

    from orchestrator import starter

    written = starter.write(directory, force=force)
    here = directory.resolve() == Path.cwd().resolve()
    click.echo(f"Wrote a starter project in {'the current directory' if here else directory}:")
    for rel in written:
        click.echo(f"  {rel}")
    click.echo(f"Next: {'' if here else f'cd {shlex.quote(str(directory))} && '}orch sweep {starter.CONFIG}")


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--store", "store", default=None, help=STORE_HELP)
@click.option("--address", default=None,
              help="Ray cluster to run on (auto, HOST:PORT, or local: a Ray of the sweep's own); "
                   "default: the local Ray of orch up if one runs, else a Ray of the sweep's own.")
@click.option("--resume", is_flag=False, flag_value="latest", default=None, metavar="[SWEEP_ID]",
              help="Continue an interrupted sweep: the newest unfinished one of this study, or SWEEP_ID.")
@click.option("--verbose", "-v", is_flag=True, help="Show Ray's own logs and warnings.")
@click.option("--sweep-id", default=None, hidden=True, help="The new sweep's id (orch submit names the job with it).")
@NO_REPORT
def sweep(config: Path, overrides: tuple[str, ...], store: str | None, address: str | None,
          resume: str | None, verbose: bool, sweep_id: str | None, no_report: bool) -> None:
    """Run a sweep: orch sweep CONFIG [key=value ...]."""
    from orchestrator.phases import mark

    mark("command")
    from orchestrator.store.tables import Store, store_root
    from orchestrator.tune import plan

    cfg = plan.load(config, overrides)  # before importing torch and Ray: errors come at once
    mark("config")
    from orchestrator.tune import driver

    result = driver.run(cfg, store=Store(store_root(cfg, store)), address=address,
                           resume=resume, verbose=verbose, sweep_id=sweep_id, report=not no_report,
                           summary=driver.print_summary)
    if not result.finished:
        driver.print_summary(result)
    driver.announce_report(result, _echo_report)
    mark("end")
    if not result.finished:
        from orchestrator.tune import stopping

        click.echo(stopping.message(), err=True)
        sys.exit(stopping.exit_code())
    _leave(1 if result.all_collapsed else 0)


_PROCESS = False  # set by the process's own entry points (not by a test's in-process CliRunner)


def _leave(status: int) -> None:
    """End the command with ``status``. As a process of its own, once everything is written and
    flushed, without the interpreter's teardown: unloading torch, Ray and pandas and Ray's exit
    hooks take seconds that hold the user's terminal for nothing (Ray is already shut down)."""
    if not _PROCESS:
        if status:
            sys.exit(status)
        return
    import contextlib
    import logging

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    logging.shutdown()
    os._exit(status)


def _echo_report(line: str) -> None:
    click.echo(line, err=line.startswith("orch: warning"))


@main.command()
@click.argument("study")
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--sweep", "sweep_id", default=None, help="The sweep to report (default: the study's newest).")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the page and the plots (default: <store>/reports/<study>/<sweep_id>/).")
def report(study: str, store: str | None, sweep_id: str | None, out: Path | None) -> None:
    """What a sweep learned: an HTML page (self-contained, opens offline) and PNG plots.

    Learning curves, the objective against each knob on its own scale, parallel coordinates of the
    best trials, hyperparameter importance against the knobs' tiers, the study's re-tune history,
    and a summary (best config and scores, trials by status, compute spent and saved).
    """
    from orchestrator.report import page as report_mod

    rep = report_mod.build(_store_root(store), study, sweep_id, out)
    click.echo(f"Report of sweep {rep.sweep_id} of {study}: {rep.html}")
    click.echo("Plots: " + ", ".join(p.name for p in rep.pngs.values()))
    for line in rep.suggestions:
        click.echo(f"Suggestion: {line}")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--address", default=None, metavar="URL",
              help="The cluster's dashboard (default: $RAY_API_SERVER_ADDRESS, else the local Ray of orch up, "
                   "else http://127.0.0.1:8265).")
@click.option("--store", default=None, metavar="DIR",
              help="Results store as the cluster sees it (default: $ORCH_STORE on the cluster).")
@click.option("--follow", "-f", is_flag=True,
              help="Print the sweep's output until it ends; exit 1 unless it succeeded.")
def submit(config: Path, overrides: tuple[str, ...], address: str | None, store: str | None, follow: bool) -> None:
    """Run a sweep on a Ray cluster as a Ray Job: orch submit CONFIG [key=value ...].

    The working directory (minus what .gitignore leaves out) is shipped to the cluster and
    `orch sweep` runs there, under the job name orch:<study>:<sweep_id>. The laptop can then sleep.
    """
    from orchestrator.cluster import jobs
    from orchestrator.tune import plan

    cfg = plan.load(config, overrides)  # a bad config fails here, not on the cluster
    if _debug(click.get_current_context().find_root()):
        os.environ["ORCH_DEBUG"] = "1"
    job = jobs.submit(cfg, config, list(overrides), address, store)
    click.echo(f"Submitted sweep {job.sweep_id} of {job.study} as Ray Job {job.name}")
    click.echo(f"Dashboard: {job.url}/#/jobs/{job.name}")
    click.echo(f"Progress:  orch status --address {job.url}")
    if not follow:
        return
    status = jobs.follow(address, job.name, click.echo)
    click.echo(f"Ray Job {job.name}: {status}")
    if status != "SUCCEEDED":
        sys.exit(1)


@main.command()
@click.option("--num-cpus", type=click.IntRange(min=1), default=None,
              help="CPUs the Ray head offers trials (default: this machine's cores).")
@click.option("--num-gpus", type=click.IntRange(min=0), default=None,
              help="GPUs it offers (default: those Ray finds).")
@click.option("--port", type=click.IntRange(1, 65535), default=6379, show_default=True,
              help="The head's GCS port (a free one if taken).")
@click.option("--dashboard-port", type=click.IntRange(1, 65535), default=8265, show_default=True,
              help="The dashboard's port (a free one if taken).")
def up(num_cpus: int | None, num_gpus: int | None, port: int, dashboard_port: int) -> None:
    """Start a warm local Ray on 127.0.0.1 that outlives sweeps (dashboard, token and metrics on).

    While it runs, orch sweep joins it instead of starting a Ray of its own, so a sweep pays no Ray
    start-up and the dashboard stays up between sweeps; orch status and orch submit use it too.
    Trials run in the environment orch up was started from. orch down stops it.
    """
    from orchestrator.tune import warm as local

    head, started = local.up(num_cpus, num_gpus, port, dashboard_port)
    click.echo(f"{'Started' if started else 'Already running:'} a local Ray at {head.address} (pid {head.pid})")
    click.echo(f"Dashboard: {head.dashboard}")
    if head.metrics_port:
        click.echo(f"Metrics:   http://127.0.0.1:{head.metrics_port}/metrics")
    click.echo("orch sweep, orch status and orch submit use it until: orch down")


@main.command()
def down() -> None:
    """Stop the warm local Ray that orch up started (no other Ray on this machine is touched)."""
    from orchestrator.tune import warm as local

    head = local.down()
    if head is None:
        click.echo("no local Ray started by orch up runs")
        return
    click.echo(f"Stopped the local Ray at {head.address} (pid {head.pid})")


@main.command()
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--address", default=None, metavar="URL",
              help="Also list the sweeps running as Ray Jobs on the cluster with this dashboard "
                   "(default: $RAY_API_SERVER_ADDRESS if set, else the local Ray of orch up).")
@click.option("--all", "show_all", is_flag=True, help="Also sweeps that ended or were interrupted.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def status(store: str | None, address: str | None, show_all: bool, fmt: str) -> None:
    """List running sweeps and their progress: trials done, running, best so far."""
    from orchestrator.cluster import jobs

    root = _store_root(store)
    local = jobs.local_sweeps(root, show_all)
    given = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    address = address or jobs.default_address()
    try:
        rows = jobs.merge(local, jobs.cluster_jobs(address, show_all)) if address else local
    except UserError as err:
        if given:
            raise
        # The warm local Ray's dashboard (a default, not asked for) does not answer: this store's sweeps.
        click.echo(f"orch: warning: {err}", err=True)
        rows = local
    if not rows and fmt == "table":
        where = f"in {root}" + (f" or on {address}" if address else "")
        click.echo(f"no running sweeps {where}" + ("" if address else " (--address URL: a cluster's Ray Jobs)"))
        return
    click.echo(jobs.render(rows, fmt), nl=False)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--config-only", is_flag=True, help="Validate the config and data only; skip the training checks.")
def check(config: Path, overrides: tuple[str, ...], config_only: bool) -> None:
    """Check a config, its data and its model before a sweep (seconds, no Ray).

    Exits 2 for an invalid config, 1 when a training check fails.
    """
    from orchestrator.train import data as data_mod
    from orchestrator.train.losses import check_task
    from orchestrator.tune import plan
    from orchestrator.tune.plan import check_model

    cfg, search = plan.load_with_search(config, overrides)
    _check_machine(cfg)
    dataset = data_mod.load(cfg)
    check_task(cfg, dataset, search.space)
    check_model(cfg, dataset)
    space, n = search.space, search.n_trials
    click.echo(f"{config}: ok. study {cfg.study}; {dataset.describe()}; data fingerprint {dataset.fingerprint}")
    stages = f" in {cfg.search.stages} stages" if cfg.search.stages > 1 else ""
    tiers = f" (tiers {', '.join(cfg.search.tiers)})" if cfg.search.tiers else ""
    click.echo(f"Searches {len(space.searched)} knobs{tiers}, {n} trials of {cfg.search.algorithm} search{stages} "
               f"under {cfg.scheduler.name}: {space.describe() or '(none)'}")
    held = {k: kb.middle() for k, kb in space.knobs.items() if not kb.distribution.searched}
    if held:
        click.echo("Fixed: " + ", ".join(f"{k}={v}" for k, v in held.items()))
    if config_only:
        return
    from orchestrator.train import diagnose

    point, checks, seconds = diagnose.run_checks(cfg, dataset, space)
    click.echo(diagnose.render(point, checks, seconds), nl=False)
    if not all(c.ok for c in checks):
        sys.exit(1)


def _check_machine(cfg: SweepConfig) -> None:
    """A sweep on this machine's own Ray: one trial's CPUs and GPUs must fit the machine."""
    from orchestrator.tune import connect, warm

    if warm.ray_address(cfg, None) is not None:
        return  # a cluster: orch sweep waits for a node that fits (resources.wait_s)
    cpus = cfg.ray.num_cpus or os.cpu_count() or 1
    gpus = cfg.ray.num_gpus
    if gpus is None:
        gpus = 0
        if cfg.resources.gpu_per_trial:
            import torch

            gpus = torch.cuda.device_count()
    connect.check_machine(cfg, cpus, gpus)


@main.command()
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--study", default=None, help="Only this study.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--schedule", "trial", default=None, metavar="TRIAL",
              help="The hyperparameter schedule of TRIAL of a population-based sweep (pbt, pb2).")
def results(store: str | None, study: str | None, fmt: str, trial: str | None) -> None:
    """List sweeps and their best trials, newest first."""
    from orchestrator.store import queries

    root = _store_root(store)
    if trial is not None:
        click.echo(queries.pbt_history_text(root, trial, study), nl=False)
        return
    df = queries.sweeps_table(root, study)
    click.echo(queries.render(df, fmt), nl=False)
    if fmt == "table" and len(df):
        click.echo(queries.stages_text(root, study), nl=False)


@main.command()
@click.argument("study")
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--sweep", "sweep_id", default=None, help="Best of this sweep instead of the whole study.")
def best(study: str, store: str | None, sweep_id: str | None) -> None:
    """Print the best config of STUDY as YAML, ready to train with."""
    from orchestrator.store import queries

    click.echo(queries.best_yaml(_store_root(store), study, sweep_id), nl=False)


@main.command()
@click.argument("studies", nargs=-1)
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--all", "all_studies", is_flag=True, help="Every study in the store.")
@click.option("--dry-run", is_flag=True, help="Decide and print; train nothing (no drift check, no re-tune).")
@click.option("--now", default=None, metavar="ISO-TIME",
              help="Decide as if it were this time (UTC unless a zone is given).")
@click.option("--no-drift", is_flag=True, help="Skip the drift check (re-training the best config on today's data).")
@click.option("--address", default=None, help="Ray cluster the re-tune sweeps run on.")
@click.option("--every", default=None, metavar="CRON",
              help='Run as a service: re-tune at every time of this cron expression ("0 3 * * 1").')
@click.option("--install-cron", default=None, metavar="CRON", help="Add a crontab line that runs this re-tune at CRON.")
@click.option("--uninstall-cron", is_flag=True, help="Remove this store's re-tune line from the crontab.")
@click.option("--print-cron", default=None, metavar="CRON", help="Print the crontab line instead of installing it.")
@NO_REPORT
def retune(studies: tuple[str, ...], store: str | None, all_studies: bool, dry_run: bool, now: str | None,
           no_drift: bool, address: str | None, every: str | None, install_cron: str | None,
           uninstall_cron: bool, print_cron: str | None, no_report: bool) -> None:
    """Find stale studies in the store and re-tune them, warm-started from their best configs.

    STUDIES may include retune.KEY=VALUE overrides of the studies' policies
    (retune.max_age_days=30 retune.drift_check=false ...).
    """
    from orchestrator.retune import cron
    from orchestrator.retune import decide as retune_mod

    overrides = [a for a in studies if "=" in a]
    studies = tuple(a for a in studies if "=" not in a)
    policy = retune_mod.parse_policy(overrides)
    root = _store_root(store).resolve()
    retune_mod.parse_now(now)  # checked first: a bad --now is an error even for --every

    def job() -> int:
        with cron.exclusive(root) as mine:
            if not mine:
                click.echo(cron.busy_message(root))
                return 0
            return retune_mod.run(root, list(studies), all_studies=all_studies, now=retune_mod.parse_now(now),
                                  dry_run=dry_run, drift=not no_drift, address=address, echo=click.echo,
                                  policy=policy, report=not no_report)

    scheduling = [o for o, v in (("--every", every), ("--install-cron", install_cron),
                                 ("--uninstall-cron", uninstall_cron), ("--print-cron", print_cron)) if v]
    if len(scheduling) > 1:
        raise UserError(f"{scheduling[0]} and {scheduling[1]} do not go together")
    if not studies and not all_studies and not uninstall_cron:
        raise UserError("name the studies to re-tune, or give --all")
    remote = not isinstance(root, Path)  # a store in object storage: its URI, endpoint options and all
    argv = [*studies, *overrides, *(["--all"] if all_studies else []),
            "--store", root.uri if remote else str(root),  # type: ignore[attr-defined]
            *(["--dry-run"] if dry_run else []), *(["--no-drift"] if no_drift else []),
            *(["--address", address] if address else [])]
    expr = install_cron or print_cron
    if expr:
        log_file = cron.log_path(root)  # <store>/retune.log; in object storage, a local file
        log_file.parent.mkdir(parents=True, exist_ok=True)
        line = cron.cron_line(expr, workdir=Path.cwd(), argv=argv, log_file=log_file,
                                  env=dict(os.environ), store_root=root,
                                  option="--print-cron" if print_cron else "--install-cron")
        if print_cron:
            click.echo(line)
            return
        cron.install_cron(line, cron.marker(root))
        click.echo(f"installed in the crontab:\n{line}")
        secrets = [n for n in cron.CLOUD_SECRET_NAMES if os.environ.get(n)]
        if remote and secrets:
            click.echo(f"orch: warning: the line does not carry {', '.join(secrets)}: cron's runs read the store's "
                       "credentials from ~/.aws (or the machine's role)", err=True)
        if not cron.cron_running():
            click.echo("orch: warning: no cron daemon is running on this machine; the line runs once one is", err=True)
        return
    if uninstall_cron:
        removed = cron.uninstall_cron(cron.marker(root))
        click.echo("removed the crontab line of this store" if removed else "no crontab line of this store to remove")
        return
    if every:
        sys.exit(cron.run_every(every, job, echo=click.echo))
    sys.exit(job())


@main.command()
@click.argument("study")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the model to (created; an older export there is replaced).")
@click.option("--trial", default=None, help="A kept trial's model instead of the study's model.")
@click.option("--sweep", "sweep_id", default=None, help="The sweep (default: the study's best).")
@click.option("--ensemble", type=int, default=None, metavar="K",
              help="Average the predictions of the sweep's top K kept trials (scored and recorded in the store).")
@click.option("--trust-code", is_flag=True, help="Import the model's factory even if this machine did not sign "
                                                 "the artefact.")
@click.option("--store", default=None, help=STORE_HELP)
def export(study: str, out: Path, trial: str | None, sweep_id: str | None, ensemble: int | None,
           trust_code: bool, store: str | None) -> None:
    """Write the study's model (weights, config, fitted preprocessing) to --out, loadable without the
    store by orchestrator.load_model(OUT), plus TorchScript/ONNX files of its network where it allows.
    """
    from orchestrator.store.tables import Store
    from orchestrator.tune import deliver

    path, exports = deliver.export(Store(_store_root(store)), study, out, trial=trial, sweep_id=sweep_id,
                                   ensemble=ensemble, trust_code=trust_code)
    click.echo(f"Model written to {path} (load it with orchestrator.load_model({str(path)!r}))")
    scores = deliver.artefacts.read_record(path)[1].get("scores") or {}
    for split in ("val", "test"):
        if scores.get(split):
            click.echo(f"  {split}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(scores[split].items())
                                                 if v is not None))
    for fmt, entry in exports.items():
        entries = entry if isinstance(entry, list) else [entry]
        for e in entries:
            if "file" in e:
                click.echo(f"  {fmt}: {e['file']} (outputs match the network to {e['max_abs_diff']:.1g})")
        for reason in dict.fromkeys(e["skipped"] for e in entries if "skipped" in e):
            click.echo(f"  {fmt}: not written: {reason}")


@main.command()
@click.argument("study")
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Parquet file to write: the input's columns, prediction, and proba_<class> per class.")
@click.option("--trial", default=None, help="A kept trial's model instead of the study's model.")
@click.option("--trust-code", is_flag=True, help="Import the model's factory even if this machine did not sign "
                                                 "the artefact.")
@click.option("--store", default=None, help=STORE_HELP)
def predict(study: str, data: Path, out: Path, trial: str | None, trust_code: bool, store: str | None) -> None:
    """Predict every row of DATA (CSV or Parquet, raw columns) with the study's model.

    Categories the model never saw encode as none of the known ones (all zeros in their one-hot
    columns), with a warning; a missing column is an error.
    """
    from orchestrator.store.tables import Store
    from orchestrator.tune import deliver

    path, rows, unseen = deliver.predict(Store(_store_root(store)), study, data, out, trial=trial,
                                         trust_code=trust_code)
    for column, n in sorted(unseen.items()):
        click.echo(f"orch: warning: column {column!r}: {n} value{'s' if n != 1 else ''} the model never saw "
                   "(encoded as none of its known categories)", err=True)
    click.echo(f"{rows} predictions written to {path}")


@main.command(name="fit")
@click.argument("study")
@click.option("--sweep", "sweep_id", default=None, help="The sweep whose best config to re-train (default: the "
                                                         "study's best).")
@click.option("--store", default=None, help=STORE_HELP)
def fit_command(study: str, sweep_id: str | None, store: str | None) -> None:
    """Re-train the study's best config on train + validation rows and make it the study's model.

    It trains for as many epochs as the best trial needed to reach its best epoch; its test score
    is recorded with the model (<store>/models/STUDY/SWEEP/fit/, promoted to <store>/best/STUDY/).
    """
    from orchestrator.store.tables import Store
    from orchestrator.tune import deliver

    path, record = deliver.fit(Store(_store_root(store)), study, sweep_id=sweep_id, echo=click.echo)
    test = (record.get("scores") or {}).get("test") or {}
    click.echo(f"Model written to {path}; it is now the study's model ({_store_root(store)}/best/{study})")
    if test:
        click.echo("  test: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(test.items()) if v is not None))


@main.command(name="lr-find")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the plot and the CSV (default: <store>/lr_find/).")
@click.option("--write", "write", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the config's search space (or this file's) with the suggested lr range here.")
@click.option("--min-lr", default=1.0e-7, show_default=True, help="Learning rate of the first step.")
@click.option("--max-lr", default=10.0, show_default=True, help="Learning rate of the last step.")
@click.option("--steps", type=int, default=None,
              help="Training steps (default: about 3 epochs, at least 100, at most 400).")
def lr_find(config: Path, overrides: tuple[str, ...], out: Path | None, write: Path | None,
            min_lr: float, max_lr: float, steps: int | None) -> None:
    """Learning-rate range test: raise lr every step until training diverges; suggest the lr range."""
    from orchestrator.train import lrfind

    lrfind.check_options(min_lr, max_lr, steps)  # before loading anything
    from orchestrator.store import fs
    from orchestrator.store.tables import store_root
    from orchestrator.tune import plan

    cfg = plan.load(config, overrides)
    root = store_root(cfg, None)
    # (Its plot and table are local files: next to a local store, else in the working directory.)
    default_out = Path(lrfind.OUT_DIR) if fs.is_remote(root) else Path(str(root)) / lrfind.OUT_DIR
    result = lrfind.run(cfg, min_lr, max_lr, steps, out or default_out, write, str(config))
    click.echo(lrfind.summary(result), nl=False)


@main.group(name="store")
def store_group() -> None:
    """Maintain the results store: merge small files, check every file, migrate older files."""


@store_group.command()
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--study", default=None, help="Only this study.")
@click.option("--table", default=None, help="Only this table (sweeps, trials, metrics, ...).")
@click.option("--max-rows", default=1_000_000, show_default=True, help="Most rows per merged file.")
def compact(store: str | None, study: str | None, table: str | None, max_rows: int) -> None:
    """Merge the small files of each table and study into one file.

    Atomic for orch's readers, which see either the old files or the merged one; keeps every row.
    Other Parquet readers (DuckDB, pandas) should not read the store while it runs. Exits 1 when a
    partition could not be compacted (a file that cannot be read: see orch store verify).
    """
    from orchestrator.store import maintenance

    report = maintenance.compact(_store_root(store), study=study, table=table, max_rows=max_rows)
    click.echo(report.text(), nl=False)
    if report.errors:
        sys.exit(1)


@store_group.command()
@click.option("--store", default=None, help=STORE_HELP)
def verify(store: str | None) -> None:
    """Read every Parquet file of the store; report unreadable, temporary and stray files.

    Exits 1 when a file cannot be read, 0 otherwise.
    """
    from orchestrator.store import maintenance

    report = maintenance.verify(_store_root(store), echo=lambda m: click.echo(f"orch: {m}", err=True))
    click.echo(report.text(), nl=False)
    if report.unreadable:
        sys.exit(1)


@store_group.command()
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--dry-run", is_flag=True, help="Say which partitions hold files of the previous layout; change nothing.")
def migrate(store: str | None, dry_run: bool) -> None:
    """Rewrite files written by an older orch into the stable layout (the same columns in every file).

    Every row and value is kept (checked before an old file is removed); each table and study is
    replaced at once, as orch store compact does. Run again, it does nothing. Exits 1 when a
    partition could not be migrated (it is left as it was).
    """
    from orchestrator.store import migrate as migration

    report = migration.migrate(_store_root(store), dry_run=dry_run)
    click.echo(report.text(), nl=False)
    if report.errors:
        sys.exit(1)


def run() -> None:  # pragma: no cover - console entry: the `orch` script and `python -m orchestrator`
    global _PROCESS
    _PROCESS = True
    main(prog_name="orch")


if __name__ == "__main__":  # pragma: no cover
    run()


__all__ = ["main", "UserError"]
