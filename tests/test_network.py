"""LATUP-Net is the paper's network: parameter count, shapes, size checks and cost."""

import pytest
import torch

from latup_edge.models import LATUPNet, LATUPNetConfig, count_parameters
from latup_edge.models.cost import model_cost


def test_parameter_count_is_the_papers():
    assert count_parameters(LATUPNet()) == 3_069_060


def test_parameter_count_without_se_blocks():
    assert count_parameters(LATUPNet(LATUPNetConfig(use_se=False))) == 3_056_260


def test_six_squeeze_excite_blocks():
    from latup_edge.models.latup_net import SqueezeExcite

    assert sum(isinstance(m, SqueezeExcite) for m in LATUPNet().modules()) == 6


def test_full_size_output_shape_at_128():
    # Shapes only (meta device): the real pass at 128^3 costs ~10 s on 2 cores.
    net = LATUPNet().to_empty(device="meta").eval()
    with torch.no_grad():
        out = net(torch.empty(1, 3, 128, 128, 128, device="meta"))
    assert out.shape == (1, 4, 128, 128, 128)


@pytest.mark.parametrize("upsample", ["nearest", "trilinear"])
def test_non_cubic_sizes_divisible_by_8(upsample):
    net = LATUPNet(LATUPNetConfig(base_filters=4, upsample=upsample)).eval()
    with torch.no_grad():
        probabilities = net.predict(torch.rand(2, 3, 16, 24, 40))
    assert probabilities.shape == (2, 4, 16, 24, 40)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(2, 16, 24, 40))


@pytest.mark.parametrize("shape", [(1, 3, 20, 16, 16), (1, 3, 16, 16, 12), (1, 4, 16, 16, 16), (3, 16, 16, 16)])
def test_bad_input_shapes_are_refused_clearly(shape):
    net = LATUPNet(LATUPNetConfig(base_filters=4))
    with pytest.raises(ValueError, match="divisible by 8|expects input"):
        net(torch.zeros(shape))


def test_decoder_up_convolution_pads_after_only():
    # A 2x2x2 "same" conv pads 0 before and 1 after: the last voxel sees the zero pad.
    from latup_edge.models.latup_net import SamePadConv2

    conv = SamePadConv2(1, 1, slope=1.0)
    torch.nn.init.ones_(conv.conv.weight)
    torch.nn.init.zeros_(conv.conv.bias)
    out = conv(torch.ones(1, 1, 2, 2, 2))
    assert out[0, 0, 0, 0, 0] == 8 and out[0, 0, 1, 1, 1] == 1


def test_cost_at_128_is_within_2_percent_of_789_gmac():
    cost = model_cost(LATUPNet(), (3, 128, 128, 128))
    assert abs(cost.gmac - 789) / 789 < 0.02
    # The paper reports FP32 activations peaking around 1-2 GB at 128^3.
    assert 1_000 < cost.peak_activation_bytes / 2**20 < 2_500


def test_cost_scales_with_voxels_and_counts_convs_by_hand():
    net = LATUPNet(LATUPNetConfig(base_filters=4))
    small = model_cost(net, (3, 16, 16, 16))
    large = model_cost(net, (3, 32, 32, 32))
    # SE linear layers do not scale with voxels; their MACs are tiny next to the convs.
    assert large.macs == pytest.approx(8 * small.macs, rel=1e-3)
    embed = 16**3 * 4 * 3 * 27  # the first 3x3x3 conv, by hand
    assert small.macs_by_stage["parallel"] == embed + (16**3 * 4 * 4) * (1 + 27 + 125)


def test_brain_statistics_equal_the_papers_layers_on_an_all_brain_input():
    torch.manual_seed(0)
    volume = LATUPNet(LATUPNetConfig(base_filters=4)).eval()
    brain = LATUPNet(LATUPNetConfig(base_filters=4, statistics="brain")).eval()
    brain.load_state_dict(volume.state_dict())  # the same parameters: brain statistics add none
    x = torch.randn(1, 3, 16, 16, 24)  # no exact zero: every voxel is brain
    with torch.no_grad():
        torch.testing.assert_close(brain(x), volume(x), rtol=1e-4, atol=1e-5)


def test_brain_statistics_ignore_zero_padding_where_the_papers_layers_do_not():
    from latup_edge.models.latup_net import BrainInstanceNorm, SqueezeExcite, brain_masks

    torch.manual_seed(0)
    x = torch.zeros(1, 3, 16, 16, 16)
    x[:, :, 2:14, 3:13, 4:12] = torch.randn(1, 3, 12, 10, 8) + 2.0
    padded = torch.nn.functional.pad(x, (8,) * 6)
    inner = (slice(None), slice(None), *(slice(8, -8),) * 3)
    norm, attention = BrainInstanceNorm(3, affine=True), SqueezeExcite(3, 1)
    with torch.no_grad():
        for layer in (norm, attention):
            tight = layer(x, brain_masks(x, 0)[0])
            torch.testing.assert_close(layer(padded, brain_masks(padded, 0)[0])[inner], tight)
            # The paper's layers average the zeros too: padding moves their output.
            assert (layer(padded)[inner] - layer(x)).abs().max() > 0.05


def test_brain_masks_pool_to_every_level():
    from latup_edge.models.latup_net import brain_masks

    x = torch.zeros(1, 3, 16, 16, 16)
    x[0, 1, 3, 3, 3] = 1.0
    masks = brain_masks(x, 3)
    assert [tuple(m.shape[2:]) for m in masks] == [(16,) * 3, (8,) * 3, (4,) * 3, (2,) * 3]
    assert [int(m.sum()) for m in masks] == [1, 1, 1, 1]
