"""Calibration sets: the 3-D crops and brain boxes INT8 quantization calibrates on."""
