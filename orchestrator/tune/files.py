"""The names of orch's own files in a sweep's experiment directory (``<store>/_ray/<sweep_id>/``).

Kept apart from the modules that write them so that readers (``orch status``, ``orch submit``)
import nothing heavy. Tune never reads these files; they are not signed.
"""

from __future__ import annotations

SWEEP_CONFIG_FILE = "orch_sweep.yaml"  # the resolved config the sweep started with (for --resume)
STATUS_FILE = "orch_status.json"  # what the sweep is doing, rewritten while it runs
STAGES_FILE = "stages.json"  # coarse-to-fine: each stage's ranges and trials
WEIGHTS_DIR = "weights"  # each trial's best epoch's weights (<trial_id>.pt), until the sweep keeps its best
