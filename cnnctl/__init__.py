"""cnnctl: train convolutional neural networks from YAML experiment files."""

__version__ = "0.1.0"
