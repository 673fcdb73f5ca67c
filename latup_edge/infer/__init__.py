"""Inference: whole-volume prediction over any backend that maps a model input to class scores."""
