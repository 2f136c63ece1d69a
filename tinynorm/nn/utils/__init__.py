"""Layer utilities: weight normalization and batch-norm fusion for inference."""

from .fusion import fuse_conv_bn, fuse_linear_bn
from .weight_norm import remove_weight_norm, weight_norm

__all__ = ["fuse_conv_bn", "fuse_linear_bn", "remove_weight_norm", "weight_norm"]
