"""Wall-clock marks of a sweep's phases (start-up, training, shut-down), for profiling.

With ``ORCH_PROFILE=FILE`` set, :func:`mark` appends ``{"phase": ..., "t": <unix time>}`` as a JSON
line to FILE (bench/startup.py reads them); unset, it costs one environment lookup.
"""

from __future__ import annotations

import contextlib
import json
import os
import time


def mark(phase: str) -> None:
    path = os.environ.get("ORCH_PROFILE")
    if not path:
        return
    with contextlib.suppress(OSError), open(path, "a") as out:  # a profile never stops a sweep
        out.write(json.dumps({"phase": phase, "t": time.time(), "pid": os.getpid()}) + "\n")
