"""Plain-torch building blocks: ConvShare layers, token<->map geometry, recording attention."""
from .attention_layer import Attention
from .backend import ConvBackend, DirectConv, conv_operator
from .castling import CastlingAttention, linear_angular_attention, linear_angular_probs
from .convshare import ConvShareLinear
from .cvt import ConvProjection, CvTAttention
from .geometry import ConvGeometry, default_map_shape, resolve_geometry, working_kernel_sizes
from .recorder import AttentionRecorder, recording_modules

__all__ = [
    "Attention",
    "CastlingAttention",
    "ConvProjection",
    "CvTAttention",
    "linear_angular_attention",
    "linear_angular_probs",
    "AttentionRecorder",
    "ConvBackend",
    "ConvGeometry",
    "ConvShareLinear",
    "conv_operator",
    "DirectConv",
    "default_map_shape",
    "recording_modules",
    "resolve_geometry",
    "working_kernel_sizes",
]
