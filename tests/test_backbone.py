import pytest
import torch

from core.backbone import ConvNeXtBackbone, output_shapes

from .conftest import TINY


@pytest.mark.parametrize(
    "kwargs, channels",
    [
        ({"backbone": "convnext_atto"}, [40, 80, 160, 320]),
        ({"backbone": "convnextv2_atto"}, [40, 80, 160, 320]),
        ({"backbone": "convnext_atto", "depths": [1, 1, 2, 1], "dims": [16, 24, 48, 96]}, [16, 24, 48, 96]),
    ],
)
@pytest.mark.parametrize("in_chans", [1, 4, 13])
def test_pyramid_shapes_and_logits(kwargs, channels, in_chans):
    net = ConvNeXtBackbone(**kwargs, in_chans=in_chans, num_classes=5)
    assert net.channels == channels
    assert net.strides == [4, 8, 16, 32]
    shapes = output_shapes(net, size=64)
    assert shapes == [(1, c, 64 // s, 64 // s) for c, s in zip(channels, [4, 8, 16, 32], strict=True)]
    x = torch.randn(2, in_chans, 64, 64)
    assert net(x).shape == (2, 5)
    out = net.hidden_states(x)
    assert len(out.hidden_states) == 4
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1])
    # timm's features/head split is kept: the two halves give the full forward pass.
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net.forward_head(net.forward_features(x)), net(x), atol=1e-6)


def test_custom_architecture_changes_depth():
    small = ConvNeXtBackbone(**TINY)
    deeper = ConvNeXtBackbone(**{**TINY, "depths": [2, 2, 2, 2]})
    assert [len(s.blocks) for s in small.model.stages] == [1, 1, 1, 1]
    assert [len(s.blocks) for s in deeper.model.stages] == [2, 2, 2, 2]


def test_bad_names_and_arch_are_explained():
    with pytest.raises(ValueError, match="not a ConvNeXt"):
        ConvNeXtBackbone("resnet50")
    with pytest.raises(ValueError, match="unknown timm backbone"):
        ConvNeXtBackbone("convnext_gigantic")
    with pytest.raises(ValueError, match="depths .* and dims .* must be given together"):
        ConvNeXtBackbone("convnext_atto", depths=[1, 1, 1, 1])
