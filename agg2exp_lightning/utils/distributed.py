"""Collectives for results that live as Python objects on each rank (per-scan records, explanations)."""
from __future__ import annotations

from typing import Any

__all__ = ["gather_objects"]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order; ``[obj]`` without an initialised process group.

    A collective: under distributed training every rank must call it, the same number of times.

    Example:
        >>> gather_objects({"s1": 0.5})
        [{'s1': 0.5}]
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]
