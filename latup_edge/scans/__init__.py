"""Scans as a clinic has them: DICOM series and NIfTI of any geometry, brought onto the model's grid and back."""
