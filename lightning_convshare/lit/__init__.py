"""The Lightning layer: modules, DataModules, loggers, callbacks and the training runner.

Only this package knows Lightning: the networks it trains are built by :mod:`lightning_convshare.models`
and handed to the modules (:func:`~lightning_convshare.lit.factory.create_module`).
"""
from . import datasets, relational  # noqa: F401  (register cifar100, imagefolder and relational)
from .data import DATAMODULES, create_datamodule
from .distill_module import DistillClassifier
from .factory import create_module
from .module import ConvShareClassifier
from .train import TrainResult, run_training

__all__ = [
    "DATAMODULES",
    "ConvShareClassifier",
    "DistillClassifier",
    "TrainResult",
    "create_datamodule",
    "create_module",
    "run_training",
]
