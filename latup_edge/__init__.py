"""LATUP-Net brain-tumour segmentation on plain CPUs."""

__version__ = "0.1.0"
