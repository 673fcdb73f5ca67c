"""BraTS data: case discovery and I/O, label conventions, preprocessing, BraTS-like phantoms."""
