"""rnnkit: recurrent neural networks for text, on PyTorch."""

__version__ = "0.1.0"
