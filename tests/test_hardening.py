"""Hardening: no path out of the store, bad stores found before Ray starts, and no traceback for
any config a user could write (a fuzz test over mutations of the shipped configs).

The config-level reproductions (a long study name, a search space that is any file, the
dashboard's host, pow2 bounds, directories named as files) are rows of the error table in
tests/test_config.py; here are the ones that need a store or the sweep command.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator import names
from orchestrator.errors import StoreError, UserError
from orchestrator.store.tables import Store
from tests.conftest import CONFIG, ROOT, assert_user_error, cli, orch

SMALL_CHECK = ["data.source=sklearn:iris", "search.num_samples=2", "scheduler.max_epochs=2",
               "scheduler.grace_period=1"]


def tree(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")} if path.exists() else set()


# -- names that become paths -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["../../../../elsewhere/x", "a/b", "/abs", ".hidden", "", "x" * 101,
                                   "name with space", "..", "a\nb"])
def test_names_outside_the_pattern_are_refused(value: str) -> None:
    with pytest.raises(UserError, match=r"^sweep id: use letters, digits"):
        names.check_name(value, "sweep id")
    assert not names.is_name(value)


def test_names_inside_the_pattern_pass() -> None:
    for value in ("tabular-digits", "20261123-160732-9ca3", "a.b_c-1", "x" * 100):
        assert names.check_name(value, "study") == value


@pytest.mark.parametrize("option", ["--sweep-id", "--resume"])
def test_sweep_id_cannot_escape_the_store(tmp_path: Path, option: str) -> None:
    store = tmp_path / "inner" / "store"
    before = tree(tmp_path)
    run = cli("sweep", CONFIG, *SMALL_CHECK, "--store", store, option, "../../../../elsewhere/x")
    assert_user_error(run, option, "'../../../../elsewhere/x'", "letters, digits")
    assert tree(tmp_path) - before <= {store}  # at most the (empty) store itself
    assert not store.exists() or not any(store.iterdir())


def test_report_never_writes_outside_for_a_planted_sweep_id(tmp_path: Path) -> None:
    # A row written into the store by someone else, whose sweep id is a path.
    store = tmp_path / "store"
    d = store / "sweeps" / "study=victim"
    d.mkdir(parents=True)
    pq.write_table(pa.table({"sweep_id": ["../../../../escaped"], "config_yaml": ["{}"]}), d / "x.parquet")
    before = tree(tmp_path)
    run = cli("report", "victim", "--store", store)
    assert run.code in (1, 2) and "Traceback" not in run.stderr, run.stderr + run.detail
    assert tree(tmp_path) == before


def test_symbolic_links_in_the_store_do_not_lead_writes_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = Store(tmp_path / "store")
    (store.root / "trials").mkdir(parents=True)
    (store.root / "trials" / "study=s").symlink_to(outside, target_is_directory=True)
    (store.root / "best").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="outside the store"):
        store.append("trials", "s", [{"sweep_id": "x", "trial_id": "t"}], "x")
    with pytest.raises(StoreError, match="outside the store"):
        store.path("best", "s.yaml")
    assert list(outside.iterdir()) == []


# -- the store, checked before Ray starts ---------------------------------------------------------


def test_store_that_is_a_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.write_text("not a directory")
    run = cli("sweep", CONFIG, *SMALL_CHECK, "--store", store)
    assert_user_error(run, f"store: {store} is a file, not a directory")


def test_store_check_writes_nothing(tmp_path: Path) -> None:
    Store(tmp_path / "a" / "b").check_writable()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match=r"^store: cannot create .*/f/sub: .*/f is a file"):
        Store(tmp_path / "f" / "sub").check_writable()


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A read-only file system (a tmpfs mounted ro), where this machine lets us mount one."""
    d = tmp_path / "ro"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    yield d
    subprocess.run(["umount", str(d)], capture_output=True)


def test_store_on_a_read_only_file_system(read_only_dir: Path) -> None:
    run = cli("sweep", CONFIG, *SMALL_CHECK, "--store", read_only_dir / "results")
    assert_user_error(run, f"store: cannot write to {read_only_dir / 'results'}", "Read-only file system")


def test_store_checks_happen_before_ray_starts(tmp_path: Path) -> None:
    # As a user runs it: a subprocess, whose output shows no Ray start (no dashboard line).
    store = tmp_path / "store"
    store.write_text("")
    p = orch("sweep", CONFIG, *SMALL_CHECK, "--store", store, cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and p.stdout == "", p.stdout + p.stderr
    assert p.stderr.splitlines() == [f"orch: error: store: {store} is a file, not a directory "
                                     "(--store, store.path or $ORCH_STORE)"]


def test_python_dash_m_orchestrator() -> None:
    p = orch("--help", timeout=60)
    assert p.returncode == 0, p.stderr
    assert "Usage: orch" in p.stdout and "sweep" in p.stdout


def test_summary_counts_one_trial_in_the_singular(tmp_path: Path) -> None:
    from orchestrator.tune.driver import SweepResult, print_summary

    lines: list[str] = []
    for n in (1, 2):
        print_summary(SweepResult("s", "x", Store(tmp_path), True, collapsed=n, counts={"completed": 3}),
                      lines.append)
    assert "1 trial collapsed to a constant output (left out of the best)." in lines
    assert "2 trials collapsed to a constant output (left out of the best)." in lines


# -- fuzz: any mutation of a shipped config is a clean result or one line -----------------------

SHIPPED = sorted((ROOT / "conf").glob("*.yaml"))
ODD_VALUES = [None, -1, 0, 1, -0.5, 1e308, float("nan"), float("inf"), 2**70, True, "", "x" * 400,
              "../../etc/passwd", "/etc/passwd", "0.0.0.0", "sklearn:nope", "🙂", [], {}, [1, 2],
              {"a": 1}, [[1]], {"loguniform": [0, 1]}, {"pow2": [3, 9]}, {"choice": []}, "???", "${oc.env:HOME}"]


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(cfg: dict, rng: random.Random) -> dict:
    cfg = copy.deepcopy(cfg)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(cfg))
        parent = cfg
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        op = rng.random()
        if op < 0.15 and isinstance(parent, dict):
            del parent[last]
        elif op < 0.3 and isinstance(parent, dict):
            parent[f"{last}{rng.choice('sx_')}"] = parent.pop(last)  # a typo in a key
        elif op < 0.4 and isinstance(parent, dict):
            parent[rng.choice(["extra", "lrr", "name", "tier", "default"])] = rng.choice(ODD_VALUES)
        else:
            parent[last] = copy.deepcopy(rng.choice(ODD_VALUES))
    return cfg


def _shipped(path: Path) -> dict:
    cfg = yaml.safe_load(path.read_text())
    if isinstance(cfg.get("base"), str):
        base = _shipped(path.parent / cfg.pop("base"))
        for k, v in cfg.items():
            base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        cfg = base
    if isinstance(cfg.get("search_space"), str):  # inline, so that mutations reach the knobs too
        cfg["search_space"] = yaml.safe_load((ROOT / cfg["search_space"]).read_text())
    return cfg


def test_fuzzed_configs_give_a_result_or_one_line(tmp_path: Path) -> None:
    seed = int(os.environ.get("ORCH_FUZZ_SEED", "0"))
    rng = random.Random(seed)
    originals = {p.name: _shipped(p) for p in SHIPPED}
    outcomes = {0: 0, 2: 0}
    for i in range(int(os.environ.get("ORCH_FUZZ_CASES", "150"))):
        name = rng.choice(sorted(originals))
        mutated = _mutate(originals[name], rng)
        path = tmp_path / f"case{i}.yaml"
        with contextlib.suppress(ValueError):  # (a NaN key and the like: YAML still writes it)
            path.write_text(yaml.safe_dump(mutated, sort_keys=False, allow_unicode=True))
        run = cli("check", "--config-only", path)
        where = f"seed {seed}, case {i} (mutated {name}):\n{path.read_text()}"
        assert run.code in (0, 2) and not run.detail, f"{run.detail}\n{run.stderr}\n{where}"
        if run.code == 2:
            lines = run.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("orch: error: "), f"{run.stderr}\n{where}"
            assert len(lines[0]) < 1000, f"{lines[0][:200]}...\n{where}"
        outcomes[run.code] += 1
    assert outcomes[2] > 0 and outcomes[0] > 0, outcomes  # the mutations reach both outcomes
