"""kdfast: fast knowledge distillation and interpretability measurement for PyTorch."""
__version__ = "0.1.0"
