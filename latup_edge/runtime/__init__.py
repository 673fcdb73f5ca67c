"""The runtime: everything a built bundle needs on a clinic PC, with the base install alone (no torch).

Bundle reading and verification, the backends (OpenVINO, ONNX Runtime; PyTorch imported only when
asked for), preprocessing as the model was trained, tiling and shape policy, the ``Predictor``,
``segment``, and the drift, benchmark and evaluation runners.
"""
