"""The distributed runtime: driver-side clients of the Ray roles and the round controller."""

from srum_ray.runtime.stage_client import (
    LocalStage,
    ServeStage,
    StageClient,
    StageReply,
    images_only,
    running_replicas,
)

__all__ = [
    "LocalStage",
    "ServeStage",
    "StageClient",
    "StageReply",
    "images_only",
    "running_replicas",
]
