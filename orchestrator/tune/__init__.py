"""Stage 4, the sweep: load and compile a config once, start or join Ray, run Ray Tune with
orch's searchers and schedulers (ASHA, PBT), write the store from callbacks, finish the sweep.
Ray's private internals are used only in :mod:`orchestrator.tune.ray_adapter`.
"""
