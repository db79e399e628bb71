"""A stand-in for `convshare train` in runner tests: starts in milliseconds, follows the same protocol.

Reads ``key=value`` arguments (as ``${args_no_hyphens}`` renders them) and the run directory from
``$CONVSHARE_TRIAL_DIR``; per epoch it appends ``{"epoch", "val/acc"}`` to ``history.jsonl``,
sleeps ``sleep`` seconds and stops early when ``STOP`` appears; at the end it writes
``metrics.json``. ``val/acc`` is the ``x`` argument (times 1 + epoch/100). ``crash=1`` exits 1 after a
traceback-like log; ``kill=1`` SIGKILLs itself in epoch 2; ``bad=1`` exits 2 with an ``error:`` line, as convshare does for a bad config.
"""
import json
import os
import sys
import time
from pathlib import Path

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
run_dir = Path(os.environ["CONVSHARE_TRIAL_DIR"])
run_dir.mkdir(parents=True, exist_ok=True)
ledger = os.environ.get("FAKE_LEDGER")
if ledger:
    with open(ledger, "a") as f:
        f.write(f"start {run_dir.parent.name}\n")
if args.get("bad") == "1":
    print("error: fake: this combination cannot work; try bad=0", file=sys.stderr)
    sys.exit(2)
x, epochs, sleep = float(args.get("x", 0.5)), int(args.get("epochs", 5)), float(args.get("sleep", 0.05))
for epoch in range(1, epochs + 1):
    time.sleep(sleep)
    with open(run_dir / "history.jsonl", "a") as f:
        f.write(json.dumps({"epoch": epoch, "val/acc": x * (1 + epoch / 100)}) + "\n")
    if args.get("kill") == "1" and epoch == 2:  # dies as the kernel's OOM killer would kill it
        os.kill(os.getpid(), 9)
    if args.get("crash") == "1" and epoch == 2:
        print("Traceback (most recent call last):\nRuntimeError: fake crash in epoch 2", flush=True)
        sys.exit(1)
    if (run_dir / "STOP").exists():
        break
metrics = {"val/acc": x * (1 + epoch / 100), "val/attn/similarity": round(1 - x, 4), "epochs": epoch,
           "env": {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "WANDB_MODE")}}
(run_dir / "metrics.json").write_text(json.dumps(metrics))
if ledger:
    with open(ledger, "a") as f:
        f.write(f"done {run_dir.parent.name}\n")
print("fake: summary", flush=True)
