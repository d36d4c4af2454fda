"""edgekd: distill, quantize, prune and export image classifiers for edge devices."""

__version__ = "0.3.0"
