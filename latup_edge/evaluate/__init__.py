"""Segmentation metrics with BraTS scoring conventions: Dice and HD95 per region, then summarised."""
