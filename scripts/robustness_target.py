"""The robustness target's one-off evaluation (README, "What a ConvShare ViT keeps on 4f hardware"): run
checkpoints on the full validation set, on ``direct``, noise-free on a preset, and at the preset's own light
budget (or ``--photons``) with exact Poisson noise over ``--draws`` draws; optionally the training surrogate.

    python scripts/robustness_target.py RUN_DIR [RUN_DIR ...] --draws 16 [--photons 1e4] [--surrogate] --out eval.jsonl
"""
import argparse
import json
import os
import statistics
import time

import torch
from omegaconf import OmegaConf

from lightning_convshare.config import compose
from lightning_convshare.evaluation.study import StudyGrid, _accuracy
from lightning_convshare.lit.data import create_datamodule
from lightning_convshare.models import ModelSpec, create_network
from lightning_convshare.optics import noise_disabled, set_backend
from lightning_convshare.optics.backends import physical_backends

p = argparse.ArgumentParser()
p.add_argument("runs", nargs="+", help="run directories (RUN/checkpoints/last.ckpt)")
p.add_argument("--draws", type=int, default=8)
p.add_argument("--surrogate", action="store_true")
p.add_argument("--preset", default="dmd-scmos")
p.add_argument("--out", default="runs/robustness_target.jsonl")
p.add_argument("--photons", type=float, default=None)
a = p.parse_args()
torch.set_num_threads(1)
cfg = compose([])
dm = create_datamodule(OmegaConf.to_container(cfg.data, resolve=True))
dm.setup("validate")
loader = dm.val_dataloader()
grid = StudyGrid(presets=(a.preset,), photons=(1e4,), encoding="offset", draws=a.draws, backend={"compile": True})
dev = torch.device("cpu")
for run in a.runs:
    t = time.time()
    ck = f"{run}/checkpoints/last.ckpt"
    net = create_network(ModelSpec.from_source(ck, exact=True)).model.eval()
    set_backend(net, "direct")
    res = {"run": run, "photons": a.photons, "direct": _accuracy(net, loader, dev, None)}
    set_backend(net, grid.spec(a.preset, "offset", None, a.photons, 0))
    with noise_disabled(net):
        res["noise_free"] = _accuracy(net, loader, dev, None)
    accs = []
    for d in range(a.draws):
        set_backend(net, grid.spec(a.preset, "offset", None, a.photons, d))
        accs.append(_accuracy(net, loader, dev, None))
    res.update(exact=statistics.fmean(accs), exact_std=statistics.stdev(accs), exact_draws=accs)
    if a.surrogate:
        accs = []
        for d in range(a.draws):
            set_backend(net, grid.spec(a.preset, "offset", None, a.photons, 100 + d))
            for b in physical_backends(net):
                for s in b.stages:
                    s.mode = "surrogate"
            accs.append(_accuracy(net, loader, dev, None))
        res.update(surrogate=statistics.fmean(accs), surrogate_std=statistics.stdev(accs), surrogate_draws=accs)
    res["wall_s"] = round(time.time() - t, 1)
    print(json.dumps(res), flush=True)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(res) + "\n")
