"""cxr: chest X-ray classifiers on imbalanced archives."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cxr-pipeline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
