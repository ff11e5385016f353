"""legokit: wrap unimodal encoders into LegoBlocks, ship them as one-file artifacts, merge and fuse them.

The data flow, floor by floor:
    encoder (named encoders in an open registry, `encoders.register_encoder`; or any module / file: `wrap` reads
      its contract (`encoders.contract`) and keeps it as a checked torch.export program (`encoders.foreign`); text
      travels with its tokenizer (`text`))
      -> LegoBlock (`block`: frequency-domain latent updates, MM-Lego Eq. 1-3)
      -> artifact (`artifact`: the .st format; `registry`: each kind's class, codec and description, registered by
         `kinds` from `codec` and `facts`; `persist`: save / load / merge_files)
      -> graph (`compose.graph`: typed composition DAG; `recipe`: YAML recipes)
      -> merged model (`compose.merge`: LegoMerge, Eq. 4 + SLERP of heads) or fused model (`compose.fuse`:
         stack / weave, fine-tuned by `train`); `adapters` (MoRA, SSF) for missing modalities.
Every model offers one interface (`model.LegoModel`: modalities, task, blocks, head, encode -> decode) and the Hub
methods (`pretrained`: save_pretrained / from_pretrained / push_to_hub; `hubref` resolves hf:// references, `hub`
publishes). Data: `data` (dataset folders, batches with missing-modality masks, the bundled PBC data); `metrics`,
`train`, `plots`; `samples` (salted hashes of the ids a model has seen, checked before scoring); `archive` (the
allowlist that foreign archives pass before any torch loader reads them).
"""

from __future__ import annotations

from .artifact import Artifact, read_artifact
from .block import BlockConfig, EncoderSpec, LegoBlock
from .compose.fuse import FusedModel, fuse
from .compose.graph import Graph
from .compose.merge import MergeConfig, MergedModel, merge
from .data import ModalityBatch
from .encoders import list_encoders, register_encoder
from .errors import ArtifactError, ConfigError, EncoderError, LegoError, ShapeError
from .kinds import BUILTIN_KINDS
from .model import LegoModel
from .persist import load, load_block, merge_files, save, save_block
from .predict import predict_folder
from .recipe import Recipe
from .registry import kind_named, kinds, register_kind
from .tasks import TaskSpec
from .text import TextSpec
from .version import __version__
from .wrap import WrapOptions, wrap_file, wrap_module

__all__ = [
    "Artifact",
    "ArtifactError",
    "BUILTIN_KINDS",
    "BlockConfig",
    "ConfigError",
    "EncoderError",
    "EncoderSpec",
    "FusedModel",
    "Graph",
    "LegoBlock",
    "LegoError",
    "LegoModel",
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
    "kind_named",
    "kinds",
    "list_encoders",
    "load",
    "load_block",
    "merge",
    "merge_files",
    "predict_folder",
    "read_artifact",
    "register_encoder",
    "register_kind",
    "save",
    "save_block",
    "wrap_file",
    "wrap_module",
]
