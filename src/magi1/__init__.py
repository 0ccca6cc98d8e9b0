"""magi1: MAGI-1 chunk-wise autoregressive video diffusion, installable and exact to the official weights."""

__version__ = "0.1.0"

__all__ = ["__version__"]
