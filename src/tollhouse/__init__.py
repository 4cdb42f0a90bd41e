"""tollhouse: an LLM gateway whose numbers are exactly right.

The public surface is small on purpose; everything else lives in subpackages
whose layout ``ARCHITECTURE.md`` describes.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tollhouse")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
