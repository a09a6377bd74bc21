"""The reference models on timm blocks, importable by the tests as ``reference_mae``."""

from mae_hf.timm_reference import ReferenceMAE, ReferenceViT, numpy_sincos_2d, randomize_

__all__ = ["ReferenceMAE", "ReferenceViT", "numpy_sincos_2d", "randomize_"]
