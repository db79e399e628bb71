"""Turning a (pretrained) ViT into ConvShare form: fidelity of a conversion, distillation losses and
progressive block replacement and shrinking conversion. Plain torch: the Lightning side is ``lit.distill_module``."""
from .distill import ATTN_LOSSES, BlockRecorder, attention_kd_loss, hidden_kd_loss, kd_logit_loss
from .fidelity import ConversionReport, LayerFit, LogitAgreement, convert, layer_fits, logit_agreement, save_conversion
from .progressive import (
    CONV_ROLES,
    BlockSchedule,
    ProgressiveLayer,
    apply_schedule,
    block_index,
    converted_blocks,
    make_progressive,
    progressive_layers,
)
from .shrink import (
    ShrinkingLayer,
    ShrinkSchedule,
    as_target,
    make_shrinking,
    shrink_metrics,
    shrink_state,
    shrinking_layers,
    tap_index,
    window_distance,
)

__all__ = [
    "ATTN_LOSSES",
    "CONV_ROLES",
    "BlockRecorder",
    "BlockSchedule",
    "ConversionReport",
    "LayerFit",
    "LogitAgreement",
    "ProgressiveLayer",
    "ShrinkSchedule",
    "ShrinkingLayer",
    "apply_schedule",
    "as_target",
    "attention_kd_loss",
    "block_index",
    "convert",
    "converted_blocks",
    "hidden_kd_loss",
    "kd_logit_loss",
    "layer_fits",
    "logit_agreement",
    "make_progressive",
    "make_shrinking",
    "progressive_layers",
    "save_conversion",
    "shrink_metrics",
    "shrink_state",
    "shrinking_layers",
    "tap_index",
    "window_distance",
]
