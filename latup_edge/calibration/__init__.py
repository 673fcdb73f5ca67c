"""Calibration sets: BraTS slices to calibrate INT8 quantization on."""
