"""`latup-edge quantize` and `latup-edge build`: INT8 with a Dice drift gate."""
