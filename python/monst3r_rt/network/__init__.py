"""The MonST3R pointmap network (PyTorch) and its checkpoint loading/saving.

Public API: :class:`PointmapNet`, :func:`load_model`, :func:`save_checkpoint`,
:class:`CheckpointError`.
"""

from .checkpoint import CheckpointError, load_model, parse_constructor_string, save_checkpoint
from .model import MONST3R_KWARGS, PointmapNet

__all__ = [
    "PointmapNet",
    "load_model",
    "save_checkpoint",
    "CheckpointError",
    "parse_constructor_string",
    "MONST3R_KWARGS",
]
