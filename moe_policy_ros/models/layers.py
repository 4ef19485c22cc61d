"""Building blocks shared by the reference models, all ONNX-exportable (opset 17).

* :class:`VisionEncoder` small CNN per camera with spatial-softmax keypoints -> one D-dim token.
* :class:`ProprioEncoder` MLP on normalised joint positions -> one token.
* :class:`Trunk` ``nn.TransformerEncoder`` (batch_first, pre-norm, no dropout) over the tokens,
  mean-pooled -> context ``c`` [B, D].
* :class:`StackedMLP` E expert MLPs whose weights live in stacked tensors [E, ...]. Training
  evaluates all experts at once (:meth:`StackedMLP.forward_all`); the exported expert stage
  gathers the active experts' weights with ``index_select`` and runs a batched matmul over
  them (:meth:`StackedMLP.forward_selected`), so its cost grows with k.
* :func:`gram_schmidt` orthonormalises columns with unrolled classical Gram-Schmidt applied
  twice (CGS2). ``torch.linalg.qr`` has no ONNX export; this is plain MatMul/Sub/Div.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from moe_policy_ros.models.config import CameraShape

#: Initial keypoint sharpness (inverse softmax temperature) of the normalised encoder.
KEYPOINT_GAIN = 4.0


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 where they divide the channels, else the largest divisor below."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class VisionEncoder(nn.Module):
    """Small CNN per camera -> one D-dim token, with spatial-softmax keypoints.

    ``keypoints`` K > 0 (the default for new models): three convolutions (two of stride 2, so
    the feature map is a quarter of the image in each direction), a 1x1 convolution to K maps,
    and a spatial softmax (Levine et al. 2016, as robomimic and Diffusion Policy use it): each
    map becomes the expected (x, y) image coordinate of its softmax, in [-1, 1], with a learned
    temperature. The 2K coordinates plus the globally pooled features go through a linear
    layer. A global average pool alone keeps *what* is in the image but little of *where*,
    and a manipulation policy must locate the object it grasps.

    ``keypoints == 0``: the earlier encoder (three stride-2 convolutions, global average pool,
    linear), kept so that checkpoints written before keypoints existed load unchanged.
    """

    def __init__(self, camera: CameraShape, channels: int, out_dim: int, keypoints: int = 0,
                 norm: str = "none") -> None:
        super().__init__()
        c = channels
        self.camera = camera
        self.keypoints = keypoints
        last_stride = 1 if keypoints else 2
        convs = [
            nn.Conv2d(3, c, 5, stride=2, padding=2),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.Conv2d(2 * c, 2 * c, 3, stride=last_stride, padding=1),
        ]
        layers: list[nn.Module] = []
        for conv in convs:
            layers.append(conv)
            if norm == "group":
                layers.append(nn.GroupNorm(_groups(conv.out_channels), conv.out_channels))
            layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        if keypoints:
            self.keypoint_maps = nn.Conv2d(2 * c, keypoints, 1)
            # normalised features give keypoint logits of order 1, and over the h*w cells of
            # the map a softmax at temperature 1 is near uniform: start at 1/KEYPOINT_GAIN
            t0 = -math.log(KEYPOINT_GAIN) if norm == "group" else 0.0
            self.log_temperature = nn.Parameter(torch.full((), t0))
            h, w = (-(-camera.height // 4), -(-camera.width // 4))  # ceil: padding keeps it
            ys = torch.linspace(-1.0, 1.0, h).view(h, 1).expand(h, w).reshape(-1)
            xs = torch.linspace(-1.0, 1.0, w).view(1, w).expand(h, w).reshape(-1)
            self.register_buffer("grid", torch.stack([xs, ys], dim=1), persistent=False)
            self.proj = nn.Linear(2 * c + 2 * keypoints, out_dim)
        else:
            self.proj = nn.Linear(2 * c, out_dim)

    def forward(self, image: Tensor) -> Tensor:
        feats = self.net(image)
        pooled = feats.mean(dim=(2, 3))
        if not self.keypoints:
            return self.proj(pooled)
        maps = self.keypoint_maps(feats).flatten(2)  # [B, K, h*w]
        attn = (maps * torch.exp(-self.log_temperature)).softmax(dim=-1)
        coords = (attn @ self.grid).flatten(1)  # [B, 2K] expected (x, y) per keypoint
        return self.proj(torch.cat([pooled, coords], dim=1))


class ProprioEncoder(nn.Module):
    def __init__(self, proprio_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(proprio_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, proprio: Tensor) -> Tensor:
        return self.net(proprio)


class Trunk(nn.Module):
    """Transformer over [camera tokens..., proprio token] with learned positions -> [B, D]."""

    def __init__(self, num_tokens: int, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=2 * dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.norm(self.encoder(tokens + self.pos).mean(dim=1))


def mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


class StackedMLP(nn.Module):
    """E independent MLPs ``parts -> hidden (x depth, GELU) -> n_out`` in stacked tensors.

    The first layer takes its input as several parts (for example context, noisy
    coefficients and a time embedding) with one weight block per part, so that a part shared
    by all experts ([1, n]) broadcasts against per-expert parts ([k, n]) without an expand.
    """

    def __init__(
        self, num_experts: int, in_parts: Sequence[int], hidden: int, depth: int, n_out: int
    ) -> None:
        super().__init__()
        e = num_experts
        self.num_experts = e
        self.in_parts = tuple(int(p) for p in in_parts)
        fan_in = sum(self.in_parts)
        self.w_in = nn.ParameterList(
            [nn.Parameter(_uniform((e, p, hidden), fan_in)) for p in self.in_parts]
        )
        self.b_in = nn.Parameter(_uniform((e, hidden), fan_in))
        self.w_hidden = nn.ParameterList(
            [nn.Parameter(_uniform((e, hidden, hidden), hidden)) for _ in range(depth - 1)]
        )
        self.b_hidden = nn.ParameterList(
            [nn.Parameter(_uniform((e, hidden), hidden)) for _ in range(depth - 1)]
        )
        self.w_out = nn.Parameter(_uniform((e, hidden, n_out), hidden))
        self.b_out = nn.Parameter(_uniform((e, n_out), hidden))
        self.act = nn.GELU()

    def forward_all(self, parts: Sequence[Tensor]) -> Tensor:
        """Every expert on a batch: parts [B, n] (shared) or [B, E, n] -> [B, E, n_out]."""
        h = self.b_in.unsqueeze(0)
        for x, w in zip(parts, self.w_in, strict=True):
            if x.dim() == 2:
                h = h + torch.einsum("bi,eih->beh", x, w)
            else:
                h = h + torch.einsum("bei,eih->beh", x, w)
        h = self.act(h)
        for w, b in zip(self.w_hidden, self.b_hidden, strict=True):
            h = self.act(torch.einsum("beh,ehg->beg", h, w) + b.unsqueeze(0))
        return torch.einsum("beh,eho->beo", h, self.w_out) + self.b_out.unsqueeze(0)

    def forward_selected(self, parts: Sequence[Tensor], expert_idx: Tensor) -> Tensor:
        """The experts in ``expert_idx`` [k] only: parts [1, n] or [k, n] -> [k, n_out].

        Gathers the k experts' weight tensors (``index_select`` -> ONNX Gather) and runs
        batched MatMuls [k, 1, n] @ [k, n, m]; nothing is computed for inactive experts.
        """
        h = torch.index_select(self.b_in, 0, expert_idx).unsqueeze(1)  # [k, 1, hidden]
        for x, w in zip(parts, self.w_in, strict=True):
            h = h + torch.matmul(x.unsqueeze(1), torch.index_select(w, 0, expert_idx))
        h = self.act(h)
        for w, b in zip(self.w_hidden, self.b_hidden, strict=True):
            wk = torch.index_select(w, 0, expert_idx)
            bk = torch.index_select(b, 0, expert_idx).unsqueeze(1)
            h = self.act(torch.matmul(h, wk) + bk)
        wo = torch.index_select(self.w_out, 0, expert_idx)
        bo = torch.index_select(self.b_out, 0, expert_idx).unsqueeze(1)
        return (torch.matmul(h, wo) + bo).squeeze(1)


def _uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound)


def stacked_mlp_params(n_in: int, hidden: int, depth: int, n_out: int) -> int:
    """Parameter count of one expert of a :class:`StackedMLP`."""
    return (
        n_in * hidden + hidden + (depth - 1) * (hidden * hidden + hidden) + hidden * n_out + n_out
    )


def gram_schmidt(m: Tensor, eps: float = 1e-8) -> Tensor:
    """Orthonormalise the columns of ``m`` [B, N, C] (C <= N) -> Q [B, N, C], Q^T Q = I.

    Classical Gram-Schmidt with one re-orthogonalisation pass per column (CGS2, "twice is
    enough"), unrolled over the C columns: differentiable and exported as MatMul/Sub/Div, which
    ``torch.linalg.qr`` is not. Q spans the same nested column spaces as QR's Q (up to signs).
    """
    cols = m.shape[-1]
    q = m[:, :, :1]
    q = q / torch.sqrt((q * q).sum(dim=1, keepdim=True) + eps)
    for j in range(1, cols):
        v = m[:, :, j : j + 1]
        for _ in range(2):
            v = v - torch.matmul(q, torch.matmul(q.transpose(1, 2), v))
        v = v / torch.sqrt((v * v).sum(dim=1, keepdim=True) + eps)
        q = torch.cat([q, v], dim=2)
    return q


class TimeEmbedding(nn.Module):
    """Sinusoidal features of the flow time t in [0, 1]: t [B] -> [B, dim]."""

    freqs: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(100.0), half)) * math.pi
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        ang = t.unsqueeze(-1) * self.freqs
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)
