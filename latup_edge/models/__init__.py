"""LATUP-Net (paper-exact), its cost counter and its checkpoints."""

from latup_edge.models.latup_net import (
    SIZE_MULTIPLE,
    LATUPNet,
    LATUPNetConfig,
    check_input_shape,
    count_parameters,
)

__all__ = ["SIZE_MULTIPLE", "LATUPNet", "LATUPNetConfig", "check_input_shape", "count_parameters"]
