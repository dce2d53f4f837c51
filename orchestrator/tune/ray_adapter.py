"""orch's uses of Ray's private internals, in one place.

Each patch and private name below says why orch needs it. They are written against Ray 2.60; on a
Ray upgrade check each one (tests/test_security_state.py and tests/test_resume_store.py exercise
them all). The patches are installed once per process and do nothing unless a sweep is running
under :func:`guarded`.

Signing Tune's experiment state (see :mod:`orchestrator.tune.state_guard`):

- ``TuneController.save_to_dir`` writes the experiment state, the searcher's and the callbacks'
  into a local staging directory, which ``_ExperimentCheckpointManager`` then uploads to the
  experiment directory in a background thread. orch waits for the previous upload, lets Tune
  write, and signs the staging files before the upload starts: the experiment directory only
  ever receives signed bytes, and a driver killed at any moment leaves them verifiable.
- ``TuneController.resume`` reads the experiment state from the experiment directory, and
  ``_ExperimentCheckpointManager.sync_down_experiment_state`` copies the other state files into
  staging, from where Tune unpickles them: both are checked again at that moment, so a file
  replaced after orch's first check (before ``Tuner.restore``) is refused too. orch's own files
  are taken out of that copy: Tune would upload them back over the live ones at every save.
- ``Trial.get_pickled_error`` unpickles a trial's ``error.pkl`` from the store when the result
  grid is built: orch records errors in its own store and never needs the pickled exception.

Sweeps of many trials (bench/scale.py): Tune's lookups of the trainable's class in Ray's key-value
store are kept while a sweep runs (``_Registry``), the FIFO scheduler's scan for the next trial
starts after the finished ones, a finished trial keeps only what orch reads back of its results
(:func:`forget_results`), and the result grid of a run reads no per-trial result files (orch turns
them off): each would otherwise cost every trial more than the one before, or the same again.

Resuming a sweep whose store moved: ``Tuner.restore`` rebuilds the run's callbacks and scheduler
from ``tuner.pkl``, with the paths of the store the sweep started in (:func:`rebind_restored`
gives it this run's), and Tune's restored search state makes new trials there (rebased after
``TuneController.resume``).

Starting and joining Ray: Ray's reading of ``address="auto"``, a one-shot connection to a GCS that
answers (or refuses the token) at once, and the address file ``ray start`` leaves behind (see the
functions' comments).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UserError
from orchestrator.store import fs
from orchestrator.tune import state_guard

if TYPE_CHECKING:
    from ray.train._internal.storage import StorageContext
    from ray.tune import Callback, Tuner
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
    from ray.tune.search import SearchAlgorithm, Searcher

log = logging.getLogger(__name__)

# ray.tune.impl.tuner_internal._TUNER_PKL (private): the Tuner's pickled state, written into the
# experiment directory when a Tuner is created, and unpickled by Tuner.restore.
TUNER_FILE = "tuner.pkl"
# ray.tune.execution.tune_controller.TuneController.CKPT_FILE_TMPL: the experiment state Tune
# saves as it runs; without one, there is nothing to restore.
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"


class StateRejected(BaseException):
    """A check inside Tune's restore refused the state (``error`` says why).

    A BaseException: Tune's controller catches every Exception its resume raises, logs it and
    starts the experiment afresh, running every trial again.
    """

    def __init__(self, error: UserError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class _Guard:
    exp_dir: Any  # resolved: a Path, or an ObjectPath for a store in object storage
    sweep_id: str  # the experiment directory's own name
    key: state_guard.StateKey
    exempt: frozenset[str]
    context: str

    def check(self, directory: str | Path) -> None:
        try:
            state_guard.verify(directory, self.key, sweep_id=self.sweep_id,
                               context=self.context, exempt=self.exempt,
                               signatures_dir=self.exp_dir)
        except UserError as err:
            raise StateRejected(err) from None


_active: _Guard | None = None
_installed = False
_trainables: dict[tuple[int, str, str], Any] = {}  # the trainables Tune looked up while a sweep runs
_finished_head: weakref.WeakKeyDictionary[Any, tuple[list[Trial], int]] = weakref.WeakKeyDictionary()
_loopback_kept = False


def restorable(exp_dir: str | Path) -> bool:
    """Whether Tune saved an experiment state to restore in ``exp_dir``.

    A ``tuner.pkl`` alone (the driver died between creating the Tuner and Tune's first save) is
    not: the sweep starts afresh and that file is written again.
    """
    where = fs.as_path(exp_dir)
    return (where / TUNER_FILE).is_file() and any(where.glob(EXPERIMENT_STATE_GLOB))


def rebind_restored(tuner: Tuner, *, callbacks: list[Callback],
                    scheduler: TrialScheduler) -> SearchAlgorithm | Searcher | None:
    """Give a restored ``tuner`` this run's callbacks and scheduler instead of the ones pickled in
    its ``tuner.pkl`` when the sweep started (which hold that store's paths: a store moved or
    copied since would be written in its old place). Returns the restored search algorithm, whose
    own state Tune restores as ``fit()`` starts.

    The unpickled callbacks and scheduler hold no state of the run (orch's callbacks save none;
    Tune saves no scheduler state): this run's are equivalent, with the current paths.
    """
    # Tuner._local_tuner (private), its _run_config and _tune_config (private): what fit() passes
    # to tune.run. Tuner.restore (public) takes neither a RunConfig nor a TuneConfig.
    local = tuner._local_tuner
    assert local is not None  # (None only for a Tuner of a Ray Client connection, which orch never makes)
    local._run_config.callbacks = list(callbacks)
    local._tune_config.scheduler = scheduler
    return local._tune_config.search_alg


def sign_tuner_state(exp_dir: str | Path, key: state_guard.StateKey) -> None:
    """Sign the ``tuner.pkl`` a new Tuner just wrote into ``exp_dir`` (Tune writes it there
    directly, not through the staging directory)."""
    state_guard.sign(exp_dir, {TUNER_FILE: fs.as_path(exp_dir) / TUNER_FILE}, key)


@contextlib.contextmanager
def guarded(exp_dir: str | Path, key: state_guard.StateKey, *, exempt: Iterable[str] = (),
            context: str = "") -> Iterator[None]:
    """While inside, Tune's state for ``exp_dir`` is signed as Tune saves it, and checked as
    Tune restores it.

    Args:
        exp_dir: the sweep's experiment directory.
        key: this machine's state key.
        exempt: orch's own files in ``exp_dir`` (Tune never reads them; they are kept out of
            Tune's staging directory).
        context: the start of a refusal's message.

    Raises:
        StateRejected: (from inside) Tune was about to read state that is not signed.
    """
    global _active
    install()
    previous = _active
    exp_path = fs.as_path(exp_dir).resolve()
    _active = _Guard(exp_path, exp_path.name, key, frozenset(exempt), context)
    _trainables.clear()
    try:
        yield
    finally:
        _active = previous
        _trainables.clear()


def _guard_for(storage: StorageContext) -> _Guard | None:
    """The active guard, when ``storage`` (Tune's StorageContext, private) is its experiment's."""
    guard = _active
    if guard is None:
        return None
    import pyarrow.fs

    local = isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem)
    if local and Path(storage.experiment_fs_path).resolve() == guard.exp_dir:
        return guard
    if fs.is_remote(guard.exp_dir) and storage.experiment_fs_path.strip("/") == guard.exp_dir.fs_path:
        return guard
    log.warning("Tune's experiment at %s is not the guarded one (%s): its state is not signed",
                storage.experiment_fs_path, guard.exp_dir)
    return None


def _wait_for_upload(storage: StorageContext) -> None:
    # StorageContext.syncer (private) uploads the staging directory in a background thread. Tune
    # saves again while an upload still runs (it only skips the next upload): that upload could
    # then copy bytes written after the last signatures. Waiting closes that window.
    try:
        storage.syncer.wait()
    except Exception as err:  # noqa: BLE001 - Tune logs and goes on after a failed upload, as here
        log.warning("the previous upload of the experiment state failed: %s", err)


def install() -> None:
    """Patch Ray Tune (once per process); inert while no sweep is :func:`guarded`."""
    global _installed
    if _installed:
        return
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment.trial import Trial
    from ray.tune.registry import TRAINABLE_CLASS, _Registry
    from ray.tune.schedulers import FIFOScheduler

    save_to_dir = TuneController.save_to_dir
    resume = TuneController.resume
    sync_down = _ExperimentCheckpointManager.sync_down_experiment_state
    registry_get, registry_contains = _Registry.get, _Registry.contains
    registry_register, registry_unregister = _Registry.register, _Registry.unregister
    fifo_choose = FIFOScheduler.choose_trial_to_run
    fetch_dataframes = ExperimentAnalysis._fetch_trial_dataframes

    # TuneController.save_to_dir (private): the one place Tune writes its experiment state, into
    # the staging directory, right before _ExperimentCheckpointManager uploads it.
    def signed_save_to_dir(self) -> None:
        guard = _guard_for(self._storage)
        if guard is None:
            return save_to_dir(self)
        _wait_for_upload(self._storage)
        save_to_dir(self)
        state_guard.sign_dir(self._storage.experiment_driver_staging_path, guard.exp_dir, guard.key,
                             guard.exempt, guard.sweep_id)

    # TuneController.resume (private): it reads experiment_state-*.json from the experiment
    # directory (embedded cloudpickle) first; check the directory again right before.
    def checked_resume(self, *args: Any, **kwargs: Any) -> None:
        guard = _guard_for(self._storage)
        if guard is not None:
            guard.check(guard.exp_dir)
        resume(self, *args, **kwargs)
        if guard is not None:
            _rebase_new_trials(self)

    # _ExperimentCheckpointManager.sync_down_experiment_state (private): it copies every .json and
    # .pkl file of the experiment directory into staging, from where Tune unpickles the searcher's
    # and the callbacks' states: check those copies, the bytes Tune will read.
    def checked_sync_down(self) -> None:
        sync_down(self)
        guard = _guard_for(self._storage)
        staging = Path(self._storage.experiment_driver_staging_path)
        if guard is not None and staging.is_dir():
            # Every later save uploads all of staging to the experiment directory: copies of orch's
            # own files (the status file, the stages) would go back over the live ones.
            for name in guard.exempt:
                (staging / name).unlink(missing_ok=True)
            guard.check(staging)

    # Trial.get_pickled_error (public method, private use by ResultGrid): it unpickles the trial's
    # error.pkl from the store, which anyone who can write the store could have replaced. Callers
    # fall back to the text traceback (error.txt), which is all orch reads (its store records the
    # error's message).
    def no_pickled_error(self) -> None:
        return None

    # _Registry.get and .contains (private): Tune looks the trainable's class up by name in Ray's
    # internal key-value store (a call to the GCS, and an unpickling for get) five times for every
    # trial it creates (validate_trainable, get_trainable_cls): about 4 ms of the driver, and a
    # copy of the class that the trial keeps. While a sweep runs, a trainable looked up is kept
    # here; registering or unregistering anything drops them all.
    def cached_get(self, category: str, key: str) -> Any:
        if _active is None or category != TRAINABLE_CLASS:
            return registry_get(self, category, key)
        name = (id(self), category, key)
        if name not in _trainables:
            _trainables[name] = registry_get(self, category, key)
        return _trainables[name]

    def cached_contains(self, category: str, key: str) -> bool:
        return (id(self), category, key) in _trainables or registry_contains(self, category, key)

    def clearing_register(self, *args: Any, **kwargs: Any) -> Any:
        _trainables.clear()
        return registry_register(self, *args, **kwargs)

    def clearing_unregister(self, *args: Any, **kwargs: Any) -> Any:
        _trainables.clear()
        return registry_unregister(self, *args, **kwargs)

    # FIFOScheduler.choose_trial_to_run (public; the ASHA scheduler inherits it): Tune calls it at
    # every step of its loop, and it scans the list of every trial of the sweep from its start for
    # the first pending (else paused) one, past every finished trial: O(trials) a step, a sweep
    # that slows as it goes. A trial that finished never runs again in the same Tune run (a resume
    # is another run, with another list), so the scan starts after the finished trials at the head
    # of the list, remembered per scheduler. The same trial is chosen.
    def fifo_choose_after_finished(self, tune_controller: Any) -> Trial | None:
        if _active is None:
            return fifo_choose(self, tune_controller)
        trials = tune_controller.get_trials()
        seen = _finished_head.get(self)
        start = seen[1] if seen is not None and seen[0] is trials else 0
        while start < len(trials) and trials[start].status in (Trial.TERMINATED, Trial.ERROR):
            start += 1
        _finished_head[self] = (trials, start)
        for status in (Trial.PENDING, Trial.PAUSED):
            for trial in itertools.islice(trials, start, None):
                if trial.status == status:
                    return trial
        return None

    # ExperimentAnalysis._fetch_trial_dataframes (private): as a run ends, Tune reads each trial's
    # result files into a DataFrame for the result grid it returns. orch turns those files off (the
    # store holds every epoch) and reads nothing of the grid's frames: each lookup fails, is
    # logged, and leaves an empty DataFrame per trial in the driver (tens of MB, and seconds, at
    # thousands of trials). While a sweep runs there are none to read.
    def no_trial_dataframes(self) -> dict[str, Any]:
        if _active is None:
            return fetch_dataframes(self)
        return {}

    patches: list[tuple[type, str, Callable[..., Any]]] = [
        (ExperimentAnalysis, "_fetch_trial_dataframes", no_trial_dataframes),
        (TuneController, "save_to_dir", signed_save_to_dir),
        (TuneController, "resume", checked_resume),
        (_ExperimentCheckpointManager, "sync_down_experiment_state", checked_sync_down),
        (Trial, "get_pickled_error", no_pickled_error),
        (_Registry, "get", cached_get),
        (_Registry, "contains", cached_contains),
        (_Registry, "register", clearing_register),
        (_Registry, "unregister", clearing_unregister),
        (FIFOScheduler, "choose_trial_to_run", fifo_choose_after_finished),
    ]
    for cls, name, patch in patches:
        setattr(cls, name, patch)
    _installed = True


def _rebase_new_trials(controller: TuneController) -> None:
    """Trials a resumed sweep creates are stored in its experiment directory now (Tune rebases
    the trials it restores on a moved directory, not the ones created after)."""
    # SearchGenerator._experiment (private), restored with the search algorithm's saved state:
    # its StorageContext, which every new trial copies (Experiment.spec["storage"]), points where
    # the sweep started. Rebased as TuneController._restore_trials rebases the restored trials.
    experiment: Any = getattr(controller._search_alg, "_experiment", None)
    spec = getattr(experiment, "spec", None)
    if not isinstance(spec, dict) or spec.get("storage") is None:
        return
    current = controller._storage
    assert current is not None  # (a controller that resumed has its storage)
    storage = copy.copy(spec["storage"])
    storage.storage_filesystem = current.storage_filesystem
    storage.storage_fs_path = current.storage_fs_path
    storage.experiment_dir_name = current.experiment_dir_name
    experiment.storage = spec["storage"] = storage


# -- what the driver keeps of finished trials ---------------------------------------------------------


def forget_results(trial: Trial, keep: Iterable[str], analysed: Iterable[str] = ()) -> None:
    """Drop what the finished ``trial`` holds of its results, but the keys ``keep`` of its last one
    and Tune's analysis of the metrics ``analysed``.

    Tune holds every trial in the driver until the sweep ends and writes each into every experiment
    snapshot: its last result, and a running analysis (min, max, mean, means of the last 5 and 10)
    of every number it ever reported, kept in ``Trial.run_metadata`` (``_TrainingRunMetadata``,
    private) as ``metric_analysis`` and ``metric_n_steps``: about 30 KB of snapshot per trial of
    orch's results, and more in memory. Setting its attributes drops its cached JSON; Tune marks
    the trial for the next snapshot as it stops it (after the callbacks' ``on_trial_complete``).

    ``Trial._default_result_or_future`` (private) is the reference to a call Tune makes on the
    trial's actor as it starts, read only while the trial has reported nothing: held to the end
    of the sweep, it keeps that call's result in the driver's Ray object store.
    """
    meta = getattr(trial, "run_metadata", None)
    if meta is None:
        return
    if meta.last_result:
        trial._default_result_or_future = None
    kept, metrics = set(keep), set(analysed)
    meta.last_result = {k: v for k, v in (meta.last_result or {}).items() if k in kept}
    # The two stay in step (Tune updates both for a metric, if the trial ever runs again).
    meta.metric_analysis = {k: v for k, v in meta.metric_analysis.items() if k in metrics}
    meta.metric_n_steps = {k: v for k, v in meta.metric_n_steps.items() if k in meta.metric_analysis}


# -- starting and joining Ray (see orchestrator/tune/driver.py start_ray and the node scripts) -----------


def resolve_auto() -> str:
    """The cluster ``address="auto"`` means on this machine, as HOST:PORT.

    Raises:
        ConnectionError: no Ray cluster runs on this machine.
    """
    from ray._private import services

    # services.canonicalize_bootstrap_address_or_die (private): Ray's own reading of "auto"
    # ($RAY_ADDRESS, the address file of the latest `ray start`, a running GCS), so that orch can
    # check that address before ray.init waits on it.
    return services.canonicalize_bootstrap_address_or_die("auto")


def probe_gcs(address: str) -> None:
    """Connect to the GCS at ``address`` once, presenting this process's token.

    Ray's own join (``ray.init``) retries a refused token for about 20 s and a GCS that does not
    answer for minutes; this answers at once or blocks (call it inside :func:`stopping.native`
    with a deadline).

    Raises:
        ray.exceptions.AuthenticationError: the cluster refused the token.
        Exception: any other failure to connect (Ray raises several kinds).
    """
    # ray._raylet.GcsClient (private): the client ray.init itself creates first; constructing it
    # fetches the cluster id, an authenticated call.
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # (compiled; its stub omits it)

    GcsClient(address=address)


@contextlib.contextmanager
def forgetting_address_file() -> Iterator[None]:
    """Inside, ``ray start`` runs; at exit, the address file it wrote is removed if it still names
    the address written (another node's file stays).

    ``ray start`` records the cluster's address in ``<temp dir>/ray_current_cluster``, where every
    later ``ray.init()`` without an address on this machine looks first: a node that stopped would
    leave them waiting on a dead cluster. ``ray stop`` removes the default one; a stopped node does
    not.
    """
    import ray._private.utils as ray_utils
    from ray._common.utils import get_ray_address_file

    # ray._private.utils.write_ray_address (private): what `ray start` calls, with the address and
    # the temp directory, once the node is up.
    write = ray_utils.write_ray_address
    written: list[tuple[str, str | None]] = []

    def recording_write(ray_address: str, temp_dir: str | None = None) -> None:
        write(ray_address, temp_dir)
        written.append((ray_address, temp_dir))

    ray_utils.write_ray_address = recording_write
    try:
        yield
    finally:
        ray_utils.write_ray_address = write
        for ray_address, temp_dir in written:
            path = get_ray_address_file(temp_dir)  # (private) where that file is
            with contextlib.suppress(OSError):
                if Path(path).read_text().strip() == ray_address:
                    os.remove(path)


# -- the trainable's actor class, loopback addresses, the auth token --------------------------------


def function_trainable(fn: Callable[..., Any], actor_name: str) -> type:
    """Tune's actor class for the function trainable ``fn`` (``wrap_function`` is private), named
    ``actor_name`` in the dashboard's actor list (Tune reads the private class attribute
    ``_name``). orch subclasses it to name each actor for its sweep and trial."""
    from ray.tune.trainable.function_trainable import wrap_function

    cls = wrap_function(fn)
    return type("OrchTrainable", (cls,), {"_name": actor_name})


def local_node_kwargs() -> dict[str, Any]:
    """``ray.init`` arguments that keep an embedded Ray's node on 127.0.0.1 (``_node_ip_address``
    is private; without it Ray registers the node under the machine's outward address)."""
    return {"_node_ip_address": "127.0.0.1"}


def keep_loopback_resolution(is_loopback: Callable[[str], bool]) -> None:
    """Make Ray keep loopback addresses as given (``services.resolve_ip_for_localhost`` is
    private): Ray swaps ``127.0.0.1`` for the machine's outward address, so a cluster meant to stay
    on one machine would talk over its network interface. Hosts ``is_loopback`` rejects resolve as
    Ray's own. Idempotent."""
    from ray._private import services

    global _loopback_kept
    if _loopback_kept:
        return
    resolve = services.resolve_ip_for_localhost

    def resolve_keeping_loopback(host: str) -> str:
        if host in ("localhost", "127.0.0.1"):
            return "127.0.0.1"
        return host if is_loopback(host) else resolve(host)

    services.resolve_ip_for_localhost = resolve_keeping_loopback
    _loopback_kept = True


def enable_token_auth() -> None:
    """Turn token authentication on for this process's ``ray.init`` when a token is available
    (Ray's ``authentication_token_setup`` is private): ``ray start`` does it, ``ray.init(address=...)``
    does not, and without it a driver waits forever on a cluster that requires one."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


# -- population-based training: Ray's private steps as hooks ----------------------------------------


# The class PBTHooks is mixed into, for the type checker: the attributes and methods it uses are its.
if TYPE_CHECKING:
    _PBTBase = PopulationBasedTraining
else:
    _PBTBase = object


class PBTHooks(_PBTBase):
    """Mixin for Ray's ``PopulationBasedTraining`` (and PB2) that turns its private steps into
    hooks orch implements (``orchestrator.tune.pbt``):

    - ``_trial_state`` and ``_PBTTrialState`` (private) hold each trial's last checkpoint: Ray's
      ``on_trial_add`` also refuses searchers, fills knobs missing from a config from the mutations
      (a conditional knob, such as the momentum of an Adam trial, must stay missing) and warns about
      checkpoint retention (orch keeps what it exploits), so orch's replaces it;
    - ``_exploit`` (private) copies a donor's checkpoint and config: :meth:`donor_checkpoint` picks
      the checkpoint it restores from and :meth:`exploited` hears of each exploit;
    - ``_get_new_config`` (private) explores: :meth:`explore` proposes the new config, given Ray's
      own proposal as a function.
    """

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        from ray.tune.schedulers.pbt import _PBTTrialState

        if not self._metric or not self._metric_op:
            raise ValueError(f"{type(self).__name__} needs a metric and a mode")
        self._trial_state[trial] = _PBTTrialState(trial)

    def _exploit(self, tune_controller: TuneController, trial: Trial, trial_to_clone: Trial) -> None:
        donor_state = self._trial_state[trial_to_clone]
        checkpoint = self.donor_checkpoint(trial, trial_to_clone, donor_state.last_checkpoint)
        if checkpoint is None:
            log.info("pbt: no checkpoint of %s left to copy; %s goes on as it is", trial_to_clone, trial)
            return
        donor_state.last_checkpoint = checkpoint
        old_config = dict(trial.config)
        own_epoch = (trial.last_result or {}).get("epoch")
        donor_result: dict[str, Any] = donor_state.last_result or {}
        donor_epoch = donor_result.get("epoch")
        super()._exploit(tune_controller, trial, trial_to_clone)
        self.exploited(trial, trial_to_clone, own_epoch, donor_epoch, old_config, dict(trial.config))

    def _get_new_config(self, trial: Trial, trial_to_clone: Trial) -> tuple[dict, dict]:
        def ray_proposal() -> tuple[dict, dict]:
            return super(PBTHooks, self)._get_new_config(trial, trial_to_clone)

        return self.explore(trial, trial_to_clone, ray_proposal)

    @property
    def resample_probability(self) -> float:
        return self._resample_probability

    @property
    def perturbation_factors(self) -> tuple[float, ...]:
        return tuple(self._perturbation_factors)

    # -- the hooks ---------------------------------------------------------------------------------

    def donor_checkpoint(self, trial: Trial, donor: Trial, checkpoint: Any) -> Any:
        """The checkpoint ``trial`` restores from when it exploits ``donor`` (None: it goes on);
        ``checkpoint`` is the donor's last, as Ray recorded it."""
        return checkpoint

    def exploited(self, trial: Trial, donor: Trial, own_epoch: int | None, donor_epoch: int | None,
                  old_config: dict, new_config: dict) -> None:
        """``trial`` exploited ``donor``: its config went from ``old_config`` to ``new_config``."""

    def explore(self, trial: Trial, donor: Trial, ray_proposal: Callable[[], tuple[dict, dict]]) -> tuple[dict, dict]:
        """(new config, operations) for ``trial``, which copies ``donor``; default: Ray's."""
        return ray_proposal()

