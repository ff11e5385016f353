"""legokit: wrap unimodal encoders into LegoBlocks, ship them as one-file artifacts, merge and fuse them.

The data flow, floor by floor (each floor a subpackage):
    encoder: `encoders` (named encoders in an open registry, `encoders.register_encoder`; or any module / file:
      `wrap` reads its contract and keeps it as a checked torch.export program); text travels with its tokenizer
      (`text`); torch's private formats are pinned in `torch_internals`
      -> block: `nn` (`nn.block.LegoBlock`: frequency-domain latent updates, MM-Lego Eq. 1-3; layers, spectral math)
      -> artifact: `artifacts` (`format`: the .st file; `allowlist`: what a foreign archive must pass before any torch
         loader reads it; `kinds`: each kind's class, codec and description, one module each; `files`: save / load;
         `merging`: streamed merge of files); `io`: atomic writes and checked reads of any file
      -> graph: `compose.graph` (typed composition DAG); `recipe`: YAML recipes; `spec`: block specs
      -> merged model (`compose.merge`: LegoMerge, Eq. 4 + SLERP of heads) or fused model (`compose.fuse`: stack /
         weave, fine-tuned by `training`); `adapters` (MoRA, SSF) for missing modalities. Encoders, artifact kinds,
         adapters and fusion modes each have a registry whose decorator the built-ins use too.
Configurations (`nn.block.Architecture`, `training.trainer.TrainConfig`, `adapters.config.AdaptConfig`) are frozen
dataclasses whose fields, through `schema`, give the CLI flags, spec and recipe keys and the stored form.
Every model offers one interface (`interface.LegoModel`) and the Hub methods (`hub`: save_pretrained /
from_pretrained / push_to_hub, hf:// references, model cards). Data: `data` (dataset folders, batches with
missing-modality masks, bundled cohorts); `training` (trainer, workflows, metrics, baselines, paired statistics,
figures, the leakage guard); `cache` (frozen encoders' outputs); `cli` (the `legokit` command).
Importing `legokit` registers the built-in artifact kinds (`artifacts.kinds`), which Python does before any
submodule is imported, so every save and load finds them.
"""

from __future__ import annotations

from legokit.adapters.registry import adapter_names, register_adapter
from legokit.artifacts.files import load, load_block, save, save_block
from legokit.artifacts.format import Artifact, read_artifact
from legokit.artifacts.kinds import BUILTIN_KINDS, kind_named, kinds, register_kind
from legokit.artifacts.merging import merge_files
from legokit.compose.fuse import FusedModel, fuse
from legokit.compose.graph import Graph
from legokit.compose.merge import MergeConfig, MergedModel, merge
from legokit.compose.modes import fusion_mode, fusion_modes
from legokit.data import ModalityBatch
from legokit.encoders import list_encoders, register_encoder
from legokit.errors import ArtifactError, ConfigError, EncoderError, LegoError, ShapeError, WriteError
from legokit.interface import LegoModel
from legokit.nn.block import Architecture, BlockConfig, EncoderSpec, LegoBlock
from legokit.predict import predict_folder
from legokit.recipe import Recipe
from legokit.tasks import TaskSpec
from legokit.text.spec import TextSpec
from legokit.version import __version__
from legokit.wrap import WrapOptions, wrap_file, wrap_module

__all__ = [
    "Artifact",
    "ArtifactError",
    "BUILTIN_KINDS",
    "Architecture",
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
    "WriteError",
    "__version__",
    "adapter_names",
    "fuse",
    "fusion_mode",
    "fusion_modes",
    "kind_named",
    "kinds",
    "list_encoders",
    "load",
    "load_block",
    "merge",
    "merge_files",
    "predict_folder",
    "read_artifact",
    "register_adapter",
    "register_encoder",
    "register_kind",
    "save",
    "save_block",
    "wrap_file",
    "wrap_module",
]
