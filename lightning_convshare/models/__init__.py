"""Networks from specs: the model spec, the weight-source resolver, the run checkpoint format and the factory.

``create_network(ModelSpec(...))`` is the one way the package builds a network; where its weights
come from (a run checkpoint, a weights file or a hub name) is decided by :func:`resolve_source` only.
"""
from .checkpoint import (
    RUN_CHECKPOINT_SUFFIX,
    linear_state_dict,
    load_adapted,
    network_state,
    read_run_checkpoint,
    safe_load,
    save_run_checkpoint,
    trusted_checkpoints,
)
from .factory import Network, create_network, load_frozen, load_run_checkpoint
from .sources import HUB_PROBE_TIMEOUT_S, WEIGHT_SUFFIXES, WeightSource, check_hub_download, resolve_source
from .spec import DATA_KEYS, ModelSpec

__all__ = [
    "DATA_KEYS",
    "HUB_PROBE_TIMEOUT_S",
    "RUN_CHECKPOINT_SUFFIX",
    "WEIGHT_SUFFIXES",
    "ModelSpec",
    "Network",
    "WeightSource",
    "check_hub_download",
    "create_network",
    "linear_state_dict",
    "load_adapted",
    "load_frozen",
    "load_run_checkpoint",
    "network_state",
    "read_run_checkpoint",
    "resolve_source",
    "safe_load",
    "save_run_checkpoint",
    "trusted_checkpoints",
]

