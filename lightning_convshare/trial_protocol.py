"""The protocol between the local sweep runner (``sweep/``) and a trial's training run (``lit/``).

Both sides import these names from here, so they cannot drift apart; the module imports nothing,
so the runner never loads Lightning and the trial never loads the runner.

* The runner starts every trial with :data:`TRIAL_ENV` set (and :data:`TRIAL_DIR_ENV` naming the
  trial's run directory, for programs other than ``convshare train``).
* The trial appends one JSON line of scalar metrics per epoch to :data:`HISTORY_FILE` in its run
  directory (what W&B's early-termination rules read as the run history) and writes
  :data:`METRICS_FILE` when it ends.
* The runner asks a trial to stop at the end of its epoch by creating :data:`STOP_FILE` there.
"""
from __future__ import annotations

__all__ = ["HISTORY_FILE", "METRICS_FILE", "STOP_FILE", "TRIAL_DIR_ENV", "TRIAL_ENV"]

TRIAL_ENV = "CONVSHARE_SWEEP_TRIAL"
TRIAL_DIR_ENV = "CONVSHARE_TRIAL_DIR"
HISTORY_FILE = "history.jsonl"
STOP_FILE = "STOP"
METRICS_FILE = "metrics.json"
