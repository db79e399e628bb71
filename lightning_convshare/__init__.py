"""lightning_convshare: PyTorch Lightning experiments with optical-ready ConvShare Vision Transformers."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lightning-convshare")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
