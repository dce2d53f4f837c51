"""What Tune would cost every trial of a long sweep more than the one before, or again and again,
and orch removes while a sweep runs (orchestrator/tune/ray_adapter.py; bench/scale.py measures it).

Driven without a Ray run: Tune's FIFO scheduler with a fake controller, its registry with a fake
key-value store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ray.tune import registry
from ray.tune.schedulers import FIFOScheduler

from orchestrator.tune import ray_adapter, state_guard


class CountedTrial:
    """A trial whose status reads are counted."""

    def __init__(self, status: str) -> None:
        self._status = status
        self.reads = 0

    @property
    def status(self) -> str:
        self.reads += 1
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        self._status = value


class Controller:
    def __init__(self, trials: list[CountedTrial]) -> None:
        self.trials = trials

    def get_trials(self) -> list[CountedTrial]:
        return self.trials


@pytest.fixture
def sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ORCH_STATE_KEY", "ab" * 32)
    with ray_adapter.guarded(tmp_path / "exp", state_guard.load_key()):
        yield


def test_the_fifo_scheduler_chooses_as_tune_does_without_rereading_the_finished_trials(sweep) -> None:
    trials = [CountedTrial(s) for s in ("TERMINATED", "ERROR", "TERMINATED", "RUNNING", "PENDING",
                                        "PAUSED", "PENDING")]
    controller = Controller(trials)
    scheduler = FIFOScheduler()
    assert scheduler.choose_trial_to_run(controller) is trials[4]  # the first pending one
    trials[4].status = "RUNNING"
    assert scheduler.choose_trial_to_run(controller) is trials[6]
    trials[6].status = "RUNNING"
    assert scheduler.choose_trial_to_run(controller) is trials[5]  # else the first paused one
    trials[5].status = "RUNNING"
    assert scheduler.choose_trial_to_run(controller) is None

    head = [t.reads for t in trials[:3]]
    trials[3].status = "TERMINATED"
    trials.append(CountedTrial("PENDING"))
    for _ in range(3):
        assert scheduler.choose_trial_to_run(controller) is trials[7]
    assert [t.reads for t in trials[:3]] == head  # the finished head of the list is not read again
    # Another Tune run (a resume) has another list: it is scanned from its start.
    again = Controller([CountedTrial("PENDING"), CountedTrial("PENDING")])
    assert scheduler.choose_trial_to_run(again) is again.trials[0]


def test_outside_a_sweep_the_fifo_scheduler_is_tunes_own() -> None:
    trials = [CountedTrial("TERMINATED"), CountedTrial("PENDING")]
    ray_adapter.install()
    assert FIFOScheduler().choose_trial_to_run(Controller(trials)) is trials[1]
    assert FIFOScheduler().choose_trial_to_run(Controller(trials)) is trials[1]
    assert trials[0].reads == 2


class FakeKV:
    """Ray's internal key-value store, as Tune's registry uses it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.data: dict[bytes, bytes] = {}
        self.gets = 0
        monkeypatch.setattr(registry, "_internal_kv_initialized", lambda: True)
        monkeypatch.setattr(registry, "_internal_kv_get", self.get)
        monkeypatch.setattr(registry, "_internal_kv_put", self.put)
        monkeypatch.setattr(registry, "_internal_kv_del", self.data.pop)

    def get(self, key: bytes) -> bytes | None:
        self.gets += 1
        return self.data.get(key)

    def put(self, key: bytes, value: bytes, overwrite: bool = True) -> None:
        self.data[key] = value


def trainable(config: dict[str, Any]) -> None:
    pass


def other_trainable(config: dict[str, Any]) -> None:
    pass


def test_a_sweep_looks_its_trainable_up_in_rays_store_once(sweep, monkeypatch: pytest.MonkeyPatch) -> None:
    kv = FakeKV(monkeypatch)
    reg = registry._Registry(prefix="job")  # (without one, it asks Ray for the job's id)
    monkeypatch.setattr(reg, "_register_atexit", lambda: None)
    reg.register(registry.TRAINABLE_CLASS, "OrchTrial", trainable)
    first = reg.get(registry.TRAINABLE_CLASS, "OrchTrial")
    assert first is trainable and kv.gets == 1
    for _ in range(5):  # what Tune does for every trial it creates
        assert reg.contains(registry.TRAINABLE_CLASS, "OrchTrial")
        assert reg.get(registry.TRAINABLE_CLASS, "OrchTrial") is first
    assert kv.gets == 1
    # Registering again (another sweep's trainable under the same name) is seen at once.
    reg.register(registry.TRAINABLE_CLASS, "OrchTrial", other_trainable)
    assert reg.get(registry.TRAINABLE_CLASS, "OrchTrial") is other_trainable
    reg.unregister(registry.TRAINABLE_CLASS, "OrchTrial")
    assert not reg.contains(registry.TRAINABLE_CLASS, "OrchTrial")
