"""Training LATUP-Net: the paper's loss, tumour-aware patch sampling, and the training loop."""
