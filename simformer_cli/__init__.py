"""simformer: weak-shot semantic segmentation (SimFormer, NeurIPS 2022) as a staged command-line tool."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("simformer")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.1.0+src"

__all__ = ["__version__"]
