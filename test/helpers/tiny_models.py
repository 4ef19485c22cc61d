"""The tiny model size shared by the model tests (fast on 2 CPU cores)."""

from __future__ import annotations

from typing import Any

TINY: dict[str, Any] = {
    "num_experts": 4,
    "cameras": [{"name": "top", "height": 24, "width": 32}],
    "context_dim": 32,
    "expert_hidden": 32,
    "trunk_layers": 1,
    "trunk_heads": 2,
    "vision_channels": 4,
    "chunk_length": 4,
    "top_k": 2,
    "latent_dim": 8,
    "rank": 2,
    "sampler_steps": 3,
    "energy_hidden": 16,
}
