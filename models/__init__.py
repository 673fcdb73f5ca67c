"""Shipped demo weights and their model card (installed as ``latup_edge.shipped``)."""
