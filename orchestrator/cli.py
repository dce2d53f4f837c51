"""The ``orch`` command line: a table of commands, each parsing its arguments and calling one function.

User errors (bad config, bad argument, missing file) print one line and exit 2; failures at run
time exit 1. ``--debug`` (or ``ORCH_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import click

from orchestrator.errors import OrchError, UserError

STORE_HELP = "Results store directory (default: the config's store.path, else $ORCH_STORE, else results/)."


def _store_root(store: str | None) -> Path:
    from orchestrator.store import store_root

    return store_root(None, store)


class OrchGroup(click.Group):
    """Turns orch's errors into one line and an exit status."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OrchError as err:
            if _debug(ctx):
                traceback.print_exc()
            click.echo(f"orch: error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("orch: interrupted", err=True)
            sys.exit(130)


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


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--store", "store", default=None, help=STORE_HELP)
@click.option("--address", default=None, help="Ray cluster to run on (auto, HOST:PORT); default: an embedded local Ray.")
@click.option("--resume", is_flag=False, flag_value="latest", default=None, metavar="[SWEEP_ID]",
              help="Continue an interrupted sweep: the newest unfinished one of this study, or SWEEP_ID.")
@click.option("--verbose", "-v", is_flag=True, help="Show Ray's own logs and warnings.")
def sweep(config: Path, overrides: tuple[str, ...], store: str | None, address: str | None,
          resume: str | None, verbose: bool) -> None:
    """Run a sweep: orch sweep CONFIG [key=value ...]."""
    from orchestrator import config as config_mod
    from orchestrator.store import Store, store_root

    cfg = config_mod.load(config, overrides)  # before importing torch and Ray: errors come at once
    from orchestrator import sweep as sweep_mod

    result = sweep_mod.run(cfg, store=Store(store_root(cfg, store)), address=address,
                           resume=resume, verbose=verbose)
    sweep_mod.print_summary(result)
    if not result.finished:
        sys.exit(130)
    if result.all_collapsed:
        sys.exit(1)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--config-only", is_flag=True, help="Validate the config and data only; skip the training checks.")
def check(config: Path, overrides: tuple[str, ...], config_only: bool) -> None:
    """Check a config, its data and its model before a sweep (seconds, no Ray).

    Exits 2 for an invalid config, 1 when a training check fails.
    """
    from orchestrator import config as config_mod
    from orchestrator import data as data_mod
    from orchestrator import spaces
    from orchestrator.losses import check_task

    cfg = config_mod.load(config, overrides)
    dataset = data_mod.load(cfg)
    search = spaces.check_search(cfg)
    check_task(cfg, dataset, search.space)
    space, n = search.space, search.n_trials
    click.echo(f"{config}: ok. study {cfg.study}; {dataset.n_rows} rows, {dataset.n_features} features, "
               f"{dataset.task}; data fingerprint {dataset.fingerprint}")
    stages = f" in {cfg.search.stages} stages" if cfg.search.stages > 1 else ""
    tiers = f" (tiers {', '.join(cfg.search.tiers)})" if cfg.search.tiers else ""
    click.echo(f"Searches {len(space.searched)} knobs{tiers}, {n} trials of {cfg.search.algorithm} search{stages} "
               f"under {cfg.scheduler.name}: {space.describe() or '(none)'}")
    held = {k: kb.values[0] for k, kb in space.knobs.items() if kb.dist == "fixed"}
    if held:
        click.echo("Fixed: " + ", ".join(f"{k}={v}" for k, v in held.items()))
    if config_only:
        return
    from orchestrator import diagnose

    point, checks, seconds = diagnose.run_checks(cfg, dataset, space)
    click.echo(diagnose.render(point, checks, seconds), nl=False)
    if not all(c.ok for c in checks):
        sys.exit(1)


@main.command()
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--study", default=None, help="Only this study.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--schedule", "trial", default=None, metavar="TRIAL",
              help="The hyperparameter schedule of TRIAL of a population-based sweep (pbt, pb2).")
def results(store: str | None, study: str | None, fmt: str, trial: str | None) -> None:
    """List sweeps and their best trials, newest first."""
    from orchestrator import results as results_mod

    root = _store_root(store)
    if trial is not None:
        click.echo(results_mod.schedule_text(root, trial, study), nl=False)
        return
    df = results_mod.sweeps_table(root, study)
    click.echo(results_mod.render(df, fmt), nl=False)
    if fmt == "table" and len(df):
        click.echo(results_mod.stages_text(root, study), nl=False)


@main.command()
@click.argument("study")
@click.option("--store", default=None, help=STORE_HELP)
@click.option("--sweep", "sweep_id", default=None, help="Best of this sweep instead of the whole study.")
def best(study: str, store: str | None, sweep_id: str | None) -> None:
    """Print the best config of STUDY as YAML, ready to train with."""
    from orchestrator import results as results_mod

    click.echo(results_mod.best_yaml(_store_root(store), study, sweep_id), nl=False)


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
    from orchestrator import lrfind

    lrfind.check_options(min_lr, max_lr, steps)  # before loading anything
    from orchestrator import config as config_mod
    from orchestrator.store import store_root

    cfg = config_mod.load(config, overrides)
    result = lrfind.run(cfg, min_lr, max_lr, steps, out or store_root(cfg, None) / lrfind.OUT_DIR, write,
                        str(config))
    click.echo(lrfind.report(result), nl=False)


def run() -> None:  # pragma: no cover - console entry for `python -m orchestrator`
    main(prog_name="orch")


if __name__ == "__main__":  # pragma: no cover
    run()


__all__ = ["main", "UserError"]
