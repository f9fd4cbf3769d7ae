"""lit_mmrec: a PyTorch Lightning platform for multimodal recommendation research."""

__version__ = "0.1.0"
