"""Validate one run checkpoint with Lightning DDP on 2 CPU processes (gloo); rank 0 writes the metrics.

Used by tests/lit/test_ddp.py as a subprocess (DDP inside pytest would relaunch pytest):

    python tests/lit/ddp_validate.py CKPT '{"name": "synthetic", ...}' OUT.json
"""
import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_convshare.lit import ConvShareClassifier, create_datamodule


class SampleCounter(pl.Callback):
    """Counts the validation samples this rank evaluated."""

    def __init__(self) -> None:
        self.count = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.count += len(batch[1])


def main() -> None:
    ckpt, data, out = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    model = ConvShareClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    counter = SampleCounter()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", precision="32-true", logger=False,
                         callbacks=[counter], enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False)
    metrics = trainer.validate(model, datamodule=create_datamodule(data), verbose=False)[0]
    per_rank = trainer.strategy.all_gather(torch.tensor(counter.count)).tolist()
    if trainer.is_global_zero:
        out.write_text(json.dumps({**metrics, "samples_per_rank": per_rank}))


if __name__ == "__main__":
    main()
