"""legokit: wrap unimodal encoders into LegoBlocks, ship them as one-file artifacts, merge and fuse them.

The data flow, floor by floor:
    encoder (built-in `encoders`, or a foreign torch.export program)
      -> LegoBlock (`block`: frequency-domain latent updates, MM-Lego Eq. 1-3)
      -> artifact (`artifact`: the .st format; `persist`: save_block / load_block)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .artifact import Artifact, read_artifact
from .block import BlockConfig, EncoderSpec, LegoBlock
from .errors import ArtifactError, ConfigError, EncoderError, LegoError, ShapeError
from .persist import load_block, save_block
from .tasks import TaskSpec
from .wrap import wrap_file, wrap_module

__all__ = [
    "Artifact",
    "ArtifactError",
    "BlockConfig",
    "ConfigError",
    "EncoderError",
    "EncoderSpec",
    "LegoBlock",
    "LegoError",
    "ShapeError",
    "TaskSpec",
    "__version__",
    "load_block",
    "read_artifact",
    "save_block",
    "wrap_file",
    "wrap_module",
]
