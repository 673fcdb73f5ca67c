"""The deploy form's rewrites compute the network's own function."""

import pytest
import torch
from torch import nn

from latup_edge.deploy.deploy_form import NearestUpConv, to_deploy_form
from latup_edge.models.latup_net import LATUPNet, LATUPNetConfig, SamePadConv2


def test_nearest_upsampling_and_2x2x2_conv_are_one_transposed_conv():
    torch.manual_seed(0)
    up_conv = SamePadConv2(5, 3, slope=0.1)
    x = torch.randn(2, 5, 3, 4, 5)
    with torch.no_grad():
        expected = up_conv(nn.Upsample(scale_factor=2, mode="nearest")(x))
        rewritten = NearestUpConv(up_conv)(x)
    assert rewritten.shape == expected.shape == (2, 3, 6, 8, 10)
    torch.testing.assert_close(rewritten, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("statistics", ["volume", "brain"])
def test_deploy_form_equals_the_network(statistics, transposed):
    torch.manual_seed(0)
    model = LATUPNet(LATUPNetConfig(base_filters=4, statistics=statistics)).eval()
    x = torch.randn(1, 3, 16, 24, 32)
    x[:, :, :3] = 0  # some background for the brain mask
    deployed = to_deploy_form(model, transposed_upsampling=transposed)
    assert any(isinstance(m, NearestUpConv) for m in deployed.modules()) == transposed
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)


def test_trilinear_decoders_keep_their_upsampling():
    model = LATUPNet(LATUPNetConfig(base_filters=4, upsample="trilinear")).eval()
    deployed = to_deploy_form(model, transposed_upsampling=True)
    assert not any(isinstance(m, NearestUpConv) for m in deployed.modules())
