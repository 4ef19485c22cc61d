"""The vision encoder keeps *where* things are (spatial-softmax keypoints), not only *what*."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from moe_policy_ros.models.config import CameraShape  # noqa: E402
from moe_policy_ros.models.layers import VisionEncoder  # noqa: E402


def _spike(row: int, col: int) -> torch.Tensor:
    feats = torch.zeros(1, 4, 4, 4)  # [B, 2c, h, w] for c = 2 on a 16x16 camera
    feats[0, 0, row, col] = 1.0
    return feats


def _bare(keypoints: int) -> VisionEncoder:
    """An encoder whose CNN is bypassed, so the test feeds feature maps directly."""
    enc = VisionEncoder(CameraShape("top", 16, 16), channels=2, out_dim=8, keypoints=keypoints)
    enc.net = nn.Identity()
    return enc


def test_keypoint_is_the_expected_image_coordinate_of_its_map() -> None:
    enc = _bare(keypoints=1)
    with torch.no_grad():
        enc.keypoint_maps.weight.zero_()
        enc.keypoint_maps.weight[0, 0] = 50.0  # a sharp map that follows channel 0
        enc.keypoint_maps.bias.zero_()
        seen: dict[str, torch.Tensor] = {}
        enc.proj.register_forward_hook(lambda _m, inp, _o: seen.__setitem__("in", inp[0]))
        enc(_spike(3, 0))  # bottom-left of the 4x4 map
    x, y = seen["in"][0, -2:].tolist()
    assert x == pytest.approx(-1.0, abs=1e-3) and y == pytest.approx(1.0, abs=1e-3)


def test_position_reaches_the_token_with_keypoints_and_not_with_pooling_alone() -> None:
    torch.manual_seed(0)
    pooled, keyed = _bare(keypoints=0), _bare(keypoints=4)
    with torch.no_grad():
        keyed.keypoint_maps.weight.normal_(0.0, 10.0)
        a, b = _spike(0, 0), _spike(3, 3)  # same content, another place
        assert torch.allclose(pooled(a), pooled(b))  # the pool cannot tell them apart
        assert (keyed(a) - keyed(b)).abs().max() > 1e-3


def test_the_feature_map_grid_matches_the_cnn_output_for_odd_sizes() -> None:
    for h, w in ((120, 160), (96, 128), (75, 99)):
        enc = VisionEncoder(CameraShape("top", h, w), channels=4, out_dim=16, keypoints=3)
        out = enc(torch.rand(2, 3, h, w))
        assert out.shape == (2, 16)
