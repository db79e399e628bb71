"""Launched by tests/lit/test_attention_ddp.py: ``trainer.validate`` with the attention callback on
N CPU processes (Lightning's ``ddp`` on gloo re-launches this script for the other ranks); rank 0
writes the logged ``val/attn/*`` values as JSON.

    python tests/lit/_attention_ddp.py OUT.json DEVICES REFERENCE.ckpt
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from lightning_convshare.config import compose
from lightning_convshare.lit import create_datamodule, create_module
from lightning_convshare.lit.attention_callback import AttentionMetricsCallback
from lightning_convshare.metrics import load_reference

OVERRIDES = ["data=synthetic", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
             "surgery.padding=same", "surgery.kernel_size=3", "data.num_val=64", "data.batch_size=16"]


class Capture(Logger):
    """Keeps every logged ``val/attn`` value (rank 0 only, as for any Lightning logger)."""

    name, version = "capture", "0"

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, float] = {}

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.values.update({k: float(v) for k, v in metrics.items() if k.startswith("val/attn")})


def validate(out: Path, devices: int, reference: str) -> dict[str, float]:
    torch.set_num_threads(1)
    cfg = compose(OVERRIDES)
    pl.seed_everything(0, verbose=False)
    module = create_module(cfg)  # the same untrained weights in every process
    callback = AttentionMetricsCallback(out.parent / "run", load_reference(reference), num_images=0, per_head=True)
    capture = Capture()
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=capture,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         default_root_dir=str(out.parent))
    trainer.validate(module, datamodule=create_datamodule(dict(cfg.data)), verbose=False)
    values = capture.values  # overall values (through self.log) and per layer / head (straight to the loggers)
    if trainer.is_global_zero:
        out.write_text(json.dumps({"world": trainer.world_size, "values": values}))
    return values


if __name__ == "__main__":
    validate(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
