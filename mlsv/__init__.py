"""mlsv: multi-layer speaker verification on pre-trained speech encoders."""

__version__ = "0.1.0"
