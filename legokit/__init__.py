"""legokit: wrap unimodal encoders into LegoBlocks, ship them as one-file artifacts, merge and fuse them.

The data flow, floor by floor:
    encoder (built-in `encoders`, or any module / file: `wrap` reads its contract (`encoders.contract`) and keeps
      it as a checked torch.export program (`encoders.foreign`); text travels with its tokenizer (`text`))
      -> LegoBlock (`block`: frequency-domain latent updates, MM-Lego Eq. 1-3)
      -> artifact (`artifact`: the .st format; `persist`: save / load / merge_files)
      -> graph (`compose.graph`: typed composition DAG; `compose.recipe`: YAML recipes)
      -> merged model (`compose.merge`: LegoMerge, Eq. 4 + SLERP of heads) or fused model (`compose.fuse`:
         stack / weave, fine-tuned by `train`); `adapters` (MoRA, SSF) for missing modalities; `hub` for sharing
Data: `data` (dataset folders, batches with missing-modality masks, the bundled PBC data); `metrics`, `train`;
`samples` (salted hashes of the ids a model has seen, checked before scoring); `archive` (the allowlist that
foreign archives pass before any torch loader reads them).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .artifact import Artifact, read_artifact
from .block import BlockConfig, EncoderSpec, LegoBlock
from .compose.fuse import FusedModel, fuse
from .compose.graph import Graph
from .compose.merge import MergeConfig, MergedModel, merge
from .compose.recipe import Recipe
from .data import ModalityBatch
from .errors import ArtifactError, ConfigError, EncoderError, LegoError, ShapeError
from .persist import load, load_block, merge_files, save, save_block
from .predict import predict_folder
from .tasks import TaskSpec
from .text import TextSpec
from .wrap import WrapOptions, wrap_file, wrap_module

__all__ = [
    "Artifact",
    "ArtifactError",
    "BlockConfig",
    "ConfigError",
    "EncoderError",
    "EncoderSpec",
    "FusedModel",
    "Graph",
    "LegoBlock",
    "LegoError",
    "MergeConfig",
    "MergedModel",
    "ModalityBatch",
    "Recipe",
    "ShapeError",
    "TaskSpec",
    "TextSpec",
    "WrapOptions",
    "__version__",
    "fuse",
    "load",
    "load_block",
    "merge",
    "merge_files",
    "predict_folder",
    "read_artifact",
    "save",
    "save_block",
    "wrap_file",
    "wrap_module",
]
