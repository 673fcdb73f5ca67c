"""Deployment: ONNX export, INT8 quantization, OpenVINO compilation and the bundle."""
