"""The Lightning layer: module, data, loggers, callbacks and the training runner."""
from . import datasets  # noqa: F401  (registers cifar100 and imagefolder)
from .data import DATAMODULES, create_datamodule
from .module import ConvShareClassifier
from .train import TrainResult, run_training

__all__ = ["DATAMODULES", "ConvShareClassifier", "TrainResult", "create_datamodule", "run_training"]
