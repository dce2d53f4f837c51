"""``orch init`` (orchestrator/starter.py) and the files orch ships (orchestrator/shipped.py): the
starter project, its refusal to overwrite, and search spaces named by their shipped name."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import shipped, starter
from tests.conftest import ROOT, assert_user_error, cli, orch

PROJECT = ["conf/sweep.yaml", "models/__init__.py", "models/net.py", "train.py", "README.md",
           "search_spaces/mlp_adam.yaml", "search_spaces/mlp_sgd.yaml", "search_spaces/mlp_any_optimizer.yaml"]


def by_name_config(tmp_path: Path, space: str) -> Path:
    path = tmp_path / "by_name.yaml"
    path.write_text(f"study: by-name\ndata: {{source: 'sklearn:digits'}}\nsearch_space: {space}\n")
    return path


# -- the shipped files ----------------------------------------------------------------------------


def test_the_shipped_spaces_are_the_repositorys() -> None:
    spaces = shipped.search_spaces()
    assert list(spaces) == sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml"))
    assert spaces["mlp_adam"].read_text() == (ROOT / "search_spaces" / "mlp_adam.yaml").read_text()
    assert {p.name for p in (ROOT / "conf").glob("*.yaml")} <= {f.name for f in shipped.folder("conf").iterdir()}


def test_a_space_by_its_shipped_name(tmp_path: Path) -> None:
    run = cli("check", by_name_config(tmp_path, "mlp_adam"), "--config-only")
    assert run.code == 0, run.stderr + run.detail
    assert "Searches 8 knobs" in run.stdout and "beta1" in run.stdout


def test_a_file_beside_the_config_wins_over_the_shipped_name(tmp_path: Path) -> None:
    (tmp_path / "mlp_adam").write_text("lr: {loguniform: [1.0e-3, 1.0e-2]}\n")
    run = cli("check", by_name_config(tmp_path, "mlp_adam"), "--config-only")
    assert run.code == 0, run.stderr + run.detail
    assert "Searches 1 knobs" in run.stdout


def test_an_unknown_space_name_lists_the_shipped_ones(tmp_path: Path) -> None:
    line = assert_user_error(cli("check", by_name_config(tmp_path, "mlp_adma")),
                             "search_space: no file 'mlp_adma' and no shipped search space of that name",
                             "(did you mean 'mlp_adam'?)", "shipped: ")
    assert all(name in line for name in shipped.search_spaces())


@pytest.mark.parametrize("space", ["search_spaces/nope.yaml", "nope.yaml", "mlp_adam.yml"])
def test_a_missing_path_is_still_a_missing_file(tmp_path: Path, space: str) -> None:
    assert_user_error(cli("check", by_name_config(tmp_path, space)), "search_space: file not found", space)


# -- orch init ------------------------------------------------------------------------------------


def test_init_writes_the_starter_project(tmp_path: Path) -> None:
    target = tmp_path / "new" / "project"
    run = cli("init", target)
    assert run.code == 0, run.stderr + run.detail
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == sorted(PROJECT)
    assert run.stdout.splitlines()[0] == f"Wrote a starter project in {target}:"
    assert all(f"  {rel}" in run.stdout.splitlines() for rel in PROJECT)
    assert run.stdout.splitlines()[-1] == f"Next: cd {target} && orch sweep conf/sweep.yaml"
    for name in starter.SPACES:  # copies of the shipped spaces
        assert (target / "search_spaces" / f"{name}.yaml").read_text() == shipped.search_spaces()[name].read_text()
    sweep = (target / "conf" / "sweep.yaml").read_text()
    assert 'factory: "models.net:build"' in sweep and 'trainable: "train:fit"' in sweep
    assert "num_samples: 16" in sweep and "name: asha" in sweep
    assert "# factory: \"data:load\"" in sweep and "# path: data/my.csv" in sweep


def test_init_in_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = cli("init")
    assert run.code == 0, run.stderr + run.detail
    assert (tmp_path / "train.py").is_file()
    assert run.stdout.splitlines()[-1] == "Next: orch sweep conf/sweep.yaml"


def test_init_overwrites_nothing_without_force(tmp_path: Path) -> None:
    assert cli("init", tmp_path).code == 0
    mine = "def fit(config, ctx):\n    pass  # my own\n"
    (tmp_path / "train.py").write_text(mine)
    (tmp_path / "models" / "net.py").unlink()
    assert_user_error(cli("init", tmp_path), "conf/sweep.yaml exists", "6 more", "unless --force")
    assert (tmp_path / "train.py").read_text() == mine  # untouched
    assert not (tmp_path / "models" / "net.py").exists()  # and nothing written either
    run = cli("init", tmp_path, "--force")
    assert run.code == 0, run.stderr + run.detail
    assert (tmp_path / "train.py").read_text() == shipped.template("train.py").read_text()
    assert (tmp_path / "models" / "net.py").is_file()


def test_init_where_a_path_is_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert_user_error(cli("init", tmp_path / "file"), "file: not a directory")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "models").write_text("x")
    assert_user_error(cli("init", tmp_path / "p", "--force"), "models is a file")
    (tmp_path / "q" / "train.py").mkdir(parents=True)
    assert_user_error(cli("init", tmp_path / "q", "--force"), "train.py is a directory")


def test_the_starter_project_passes_orch_check(tmp_path: Path) -> None:
    # In a process of its own, from the project's directory, as a user runs it: the project's
    # `models` and `train` modules are imported from there.
    if not (ROOT / "orchestrator" / "train" / "context.py").is_file():
        pytest.skip("the trial contract (orchestrator/train/context.py) is not there yet")
    assert cli("init", tmp_path).code == 0
    p = orch("check", "conf/sweep.yaml", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "conf/sweep.yaml: ok. study starter-digits" in p.stdout
    assert "Searches 8 knobs, 16 trials of random search under asha" in p.stdout
    assert "checks passed" in p.stdout
