"""Torch-only subpackage: reference MoE policy models, their losses, and the bundle exporter.

The runtime core never imports this package unless ``backend: torch`` is chosen.
"""

from moe_policy_ros.models.config import CameraShape, ModelConfig
from moe_policy_ros.models.export import (
    ExportError,
    export_bundle,
    load_checkpoint,
    save_checkpoint,
)
from moe_policy_ros.models.families import (
    AdaMoEModel,
    DenseModel,
    DiBMModel,
    LARModel,
    MoEModel,
    SMPModel,
    build_model,
)

__all__ = [
    "AdaMoEModel",
    "CameraShape",
    "DenseModel",
    "DiBMModel",
    "ExportError",
    "LARModel",
    "MoEModel",
    "ModelConfig",
    "SMPModel",
    "build_model",
    "export_bundle",
    "load_checkpoint",
    "save_checkpoint",
]
