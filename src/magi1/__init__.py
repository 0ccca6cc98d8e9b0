"""magi1: MAGI-1 chunk-wise autoregressive video diffusion, installable and exact to the official weights.

    from magi1 import MagiPipeline
    from magi1.utils import export_to_video

Names are imported on first use, so `import magi1` stays light (the CLI starts without loading torch).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "MagiPipeline": "magi1.pipeline",
    "MagiPipelineOutput": "magi1.pipeline",
    "MagiConfig": "magi1.config",
    "load_config": "magi1.config",
    "export_to_video": "magi1.utils",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'magi1' has no attribute {name!r}")


def __dir__():
    """The lazy names too, so `dir(magi1)` and tab completion show MagiPipeline before its first use."""
    return sorted(set(globals()) | set(__all__))
