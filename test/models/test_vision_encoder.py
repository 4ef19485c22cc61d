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


def _dark_scene(row: int, col: int) -> torch.Tensor:
    """A dark 120x160 image (the ALOHA top camera's look) with one 4x4 red cube."""
    img = torch.full((1, 3, 120, 160), 0.16)
    img[0, :, row : row + 4, col : col + 4] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)
    return img


def _keypoints_at_init(norm: str, image: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    enc = VisionEncoder(CameraShape("top", 120, 160), 16, 32, keypoints=16, norm=norm)
    seen: dict[str, torch.Tensor] = {}
    enc.proj.register_forward_hook(lambda _m, inp, _o: seen.__setitem__("in", inp[0]))
    with torch.no_grad():
        enc(image)
    return seen["in"][0, -32:]  # the 16 (x, y) keypoints


def test_normalised_encoder_keypoints_follow_a_small_object_from_the_first_step() -> None:
    """What vision_norm "group" exists for: a trained policy ignored the camera because, in a
    dark image whose only change is a few-pixel object, the unnormalised encoder's keypoints
    sat at the image centre for every frame, so no gradient ever said where the cube was."""
    moved = {
        norm: (_keypoints_at_init(norm, _dark_scene(40, 50))
               - _keypoints_at_init(norm, _dark_scene(70, 110))).abs().max().item()
        for norm in ("none", "group")
    }
    assert moved["none"] < 1e-3  # flat softmax: the keypoints do not see the cube move
    assert moved["group"] > 20 * moved["none"] and moved["group"] > 0.01


def test_a_config_saved_before_vision_norm_loads_the_encoder_it_was_trained_with() -> None:
    from moe_policy_ros.models import build_model
    from moe_policy_ros.models.config import ModelConfig

    old = ModelConfig(family="dense", vision_norm="none").to_dict()
    del old["vision_norm"]
    assert ModelConfig.from_saved(old).vision_norm == "none"
    assert ModelConfig.from_dict({"family": "dense"}).vision_norm == "group"  # new runs
    weights = build_model(ModelConfig(family="dense", vision_norm="none")).state_dict()
    build_model(ModelConfig.from_saved(old)).load_state_dict(weights)  # strict: same layout
    with pytest.raises(ValueError, match="vision_norm must be one of"):
        ModelConfig(family="dense", vision_norm="batch")
