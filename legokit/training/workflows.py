"""The steps a user runs: train a block on a dataset folder, fuse blocks and fine-tune them, evaluate a model."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import torch
from torch import nn

from legokit.adapters import MissingRates, attach
from legokit.adapters.base import canonical_modules
from legokit.adapters.config import AdaptConfig
from legokit.adapters.missing import DEFAULT_MISSING_SPLIT, MissingSplit
from legokit.adapters.mora import DEFAULT_RANK
from legokit.adapters.registry import adapter_class, adapter_names
from legokit.cache import TokenCache, encoded_once
from legokit.compose.fuse import FusedModel, fuse
from legokit.contract import Contract, Labelling, tokenizer_digest
from legokit.data.folder import Table, modality_shape
from legokit.data.training import SplitData
from legokit.encoders import build_encoder
from legokit.encoders.registry import Encoder
from legokit.errors import ConfigError
from legokit.interface import LegoModel, data_scale, model_columns, model_contract, model_inputs
from legokit.nn.block import BlockConfig, EncoderSpec, LegoBlock
from legokit.progress import log
from legokit.spec import BlockSpec, check_labelling
from legokit.tasks import TaskSpec
from legokit.training.calibrating import calibrate_trained
from legokit.training.distributed import world
from legokit.training.leakage import has_record, overlaps, refuse_overlap, training_seed
from legokit.training.metrics import PRIMARY, undefined_auc
from legokit.training.plots import plot_task
from legokit.training.search import search
from legokit.training.survival_scores import survival_scores
from legokit.training.trainer import (
    ADAPT_TRAINING,
    FUSE_TRAINING,
    Inputs,
    TrainConfig,
    TrainResult,
    evaluate,
    train_model,
)


def build_block(spec: BlockSpec, input_shape: tuple[int | None, ...]) -> LegoBlock:
    """A fresh block from a spec, for inputs of this per-sample shape."""
    kwargs = {"in_features": input_shape[-1], **dict(spec.encoder_kwargs)}
    encoder = build_encoder(spec.encoder, kwargs)
    config = BlockConfig(
        spec.modality,
        EncoderSpec(spec.encoder, kwargs, cast(Encoder, encoder).out_dim),
        tuple(input_shape),
        spec.task,
        **spec.settings(),
    )
    return LegoBlock(config, encoder=encoder)


def resolved_labelling(config: BlockConfig, labelling: Labelling) -> Labelling:
    """What training reads the labels as: the user's bins, unit and classes, else those the block already records
    (a trained block trained again keeps its bins and classes)."""
    own = config.contract
    if labelling.bins is None and own.edges is not None:
        labelling = Labelling(labelling.time_unit or own.time_unit, own.edges, own.time_unit, labelling.classes)
    if labelling.time_unit is None and own.time_unit is not None:
        labelling = replace(labelling, time_unit=own.time_unit)
    return labelling if labelling.classes is not None else replace(labelling, classes=own.classes)


def labelled_for(
    block: LegoBlock,
    data_dir: str | os.PathLike[str],
    labelling: Labelling,
    seed: int,
    splits: dict[str, str] | None,
    ids: Sequence[str] | None = None,
) -> SplitData:
    """A block's training data read by its contract and the user's labelling, with the contract it will record
    (schema, unit, bin edges, classes) set on the block before training; `ids` restricts the training split."""
    config = block.config
    labelling = resolved_labelling(config, labelling)
    columns = (
        {block.modality: config.contract.features} if config.contract.features and len(config.input_shape) == 1 else {}
    )
    data = SplitData.load(
        data_dir,
        {block.modality: block.data_input},
        config.task,
        seed,
        splits,
        columns,
        labelling.classes,
        labelling.scale,
    )
    if ids is not None:
        keep = set(ids)
        data.splits = {i: s if s != "train" or i in keep else "unused" for i, s in data.splits.items()}
    table = data.folder.modalities.get(block.modality)
    contract = Contract(
        features=table.columns if isinstance(table, Table) else config.contract.features,
        tokenizer=tokenizer_digest(config.text.tokenizer) if config.text is not None else None,
        classes=data.labels.classes,
    )
    if config.task.kind == "survival":
        edges = labelling.bins if labelling.bins is not None else tuple(data.survival_edges()[1:-1].tolist())
        contract = Contract(contract.features, contract.tokenizer, labelling.unit, edges)
    block.config = replace(config, contract=contract)
    return data


def _searched(
    train: Callable[[TrainConfig], tuple[LegoBlock, TrainResult]], base: TrainConfig, trials: int, task: TaskSpec
) -> tuple[LegoBlock, TrainResult]:
    """The best of `trials` trainings chosen on validation (`legokit.training.search`), its search table recorded in
    its provenance's training record."""
    model, result, record = search(train, base, trials, PRIMARY[task.kind])
    block = cast(LegoBlock, model)
    block.provenance["trained"]["search"] = record
    return block, result


def train_block(
    data_dir: str | os.PathLike[str],
    spec: BlockSpec,
    splits: dict[str, str] | None = None,
    ids: Sequence[str] | None = None,
    progress: bool = True,
    trials: int = 1,
) -> tuple[LegoBlock, TrainResult]:
    """Train one block on its modality of a dataset folder; `ids` restricts training to those samples (unpaired
    settings). Its input standardisation comes from the training split; provenance records data, split, metrics,
    and its contract what its inputs and outputs mean (`legokit.contract`). `trials` > 1 searches the training
    settings on validation (`legokit.training.search`)."""
    if trials != 1:
        return _searched(
            lambda config: train_block(data_dir, replace(spec, training=config), splits, ids, progress),
            spec.training,
            trials,
            spec.task,
        )
    torch.manual_seed(spec.training.seed)
    shape = modality_shape(data_dir, spec.modality)
    block = build_block(spec, shape)
    data = labelled_for(block, data_dir, spec.labelling, spec.training.seed, splits, ids)
    block.set_normalization(*data.normalization(spec.modality, data.ids("train", [spec.modality]), world()))
    result = train_model(block, data, spec.task, spec.training, progress, label=f"training {spec.modality}")
    block.provenance = {"trained": result.provenance(data, spec.training, [spec.modality])}
    calibrate_trained(block, data, result, spec.training, [spec.modality])
    return block.cpu().eval(), result


def train_wrapped_block(
    data_dir: str | os.PathLike[str],
    block: LegoBlock,
    config: TrainConfig = TrainConfig(),
    standardize: bool = False,
    splits: dict[str, str] | None = None,
    progress: bool = True,
    cache: TokenCache | bool | None = True,
    labelling: Labelling = Labelling(),
    trials: int = 1,
) -> tuple[LegoBlock, TrainResult]:
    """Train a wrapped (or any loaded) block on its modality of a dataset folder: its latent, update layers and
    head, and its encoder too when `config.encoders` is "finetune" (a pretrained encoder stays frozen by default, and
    runs once per sample through `cache`). `standardize` sets the input standardisation from the training split;
    otherwise the encoder sees the data as stored, as it was trained to. Same trainer, splits, provenance and
    metrics as a built-in block; `labelling` says what the labels are (time unit, bins, classes). `trials` > 1
    searches the training settings on validation, each trial from a copy of `block`."""
    if trials != 1:
        resolved = TokenCache.resolve(cache)  # one cache for every trial: the frozen encoder runs once
        return _searched(
            lambda c: train_wrapped_block(
                data_dir, copy.deepcopy(block), c, standardize, splits, progress, resolved, labelling
            ),
            config,
            trials,
            block.config.task,
        )
    torch.manual_seed(config.seed)
    check_labelling(block.config.task, labelling)
    data = labelled_for(block, data_dir, labelling, config.seed, splits)
    if standardize:
        if block.config.input_dtype != "float32" or len(block.config.input_shape) > 2:
            raise ConfigError(
                f"block {block.modality}: --standardize is for feature vectors and bags of feature "
                f"tokens, not inputs of shape {block.config.input_shape} ({block.config.input_dtype})"
            )
        block.set_normalization(*data.normalization(block.modality, data.ids("train", [block.modality]), world()))
    result = train_model(
        block,
        data,
        block.config.task,
        config,
        progress,
        label=f"training {block.modality}",
        cache=TokenCache.resolve(cache),
    )
    kept = {k: v for k, v in block.provenance.items() if k not in ("trained", "calibration")}
    trained = any(p.requires_grad for p in block.encoder.parameters())
    block.provenance = {
        **kept,
        "trained": {
            **result.provenance(data, config, [block.modality]),
            "encoder": "fine-tuned" if trained else "frozen",
            "standardized": standardize,
        },
    }
    calibrate_trained(block, data, result, config, [block.modality])
    return block.cpu().eval(), result


def fuse_blocks(
    blocks: Sequence[LegoBlock],
    data_dir: str | os.PathLike[str],
    mode: str = "stack",
    config: TrainConfig = FUSE_TRAINING,
    splits: dict[str, str] | None = None,
    progress: bool = True,
    cache: TokenCache | bool | None = True,
    time_unit: str | None = None,
) -> tuple[FusedModel, TrainResult]:
    """LegoFuse: stack or weave the blocks (which must join: `compose.joins`), then fine-tune on (paired) data for a
    few epochs (default 2) with the blocks' bins; frozen pretrained encoders (the default, `config.encoders`) run
    once per sample through `cache`. `time_unit`: the unit of the folder's times, when not the blocks'. The model
    fine-tunes copies of the blocks (`fuse`): the caller's blocks stay as they were."""
    torch.manual_seed(config.seed)
    model = fuse(list(blocks), mode)
    task = model.task
    data, _, _ = labelled_data(model, data_dir, config.seed, splits, time_unit)
    test = data.ids("test", model.modalities)
    for block in model.blocks.values():
        note = _split_warning(block, data, test)
        if note:
            model.provenance.setdefault("warnings", []).append(note)
            log.warning("%s", note)
    result = train_model(model, data, task, config, progress, label=f"fusing ({mode})", cache=TokenCache.resolve(cache))
    model.provenance.update(
        {
            "fused": result.provenance(data, config, model.modalities),
            "blocks": {m: b.provenance for m, b in model.blocks.items()},
        }
    )
    model.provenance.pop("calibration", None)  # the blocks' calibrations do not fit the fused model
    calibrate_trained(model, data, result, config, model.modalities)
    return model.cpu().eval(), result


def _split_warning(block: LegoBlock, data: SplitData, test: Sequence[str]) -> str | None:
    """Why the fused model's test metrics may be optimistic: test samples the block saw in training (from its
    record of salted sample hashes), or, for a block without a record, a split other than the block's."""
    seen = overlaps(block.provenance, test)
    if seen:
        return (
            f"block {block.modality}: {seen[0].seen} of the {len(test)} test samples were in its training or "
            "validation samples"
        )
    trained_on = (block.provenance.get("trained") or {}).get("split")
    elsewhere = trained_on is not None and (trained_on != data.split_source or data.split_source == "given")
    if elsewhere and not has_record(block.provenance):
        return (
            f"block {block.modality} was trained on split '{trained_on}', fused on '{data.split_source}': its "
            "training samples may be in this test split"
        )
    return None


def labelled_data(
    model: LegoModel,
    data_dir: str | os.PathLike[str],
    seed: int,
    splits: dict[str, str] | None = None,
    time_unit: str | None = None,
) -> tuple[SplitData, TaskSpec, list[str]]:
    """A dataset folder read for a model (a block, a merged or fused model, or any of them with adapters) by its
    contract (tables by feature name, labels by class name, times in `time_unit` turned into the model's unit): the
    data with its split, the model's task, and its modalities."""
    data = SplitData.load(
        data_dir,
        model_inputs(model),
        model.task,
        seed,
        splits,
        model_columns(model),
        model_contract(model).classes,
        data_scale(model, time_unit),
    )
    return data, model.task, list(model.modalities)


def _score(
    model: nn.Module,
    data: SplitData,
    ids: Sequence[str],
    task: TaskSpec,
    inputs: Inputs | None = None,
    plot: str | os.PathLike[str] | None = None,
    title: str = "",
    cache: TokenCache | bool | None = True,
    times: Sequence[float] = (),
) -> dict[str, float]:
    """The task's metrics on these samples (a survival model's at its bin edges or `times` too: `survival_scores`),
    and their figure (`plots.plot_task`) when `plot` names a file; pretrained encoders run once per sample (through
    `cache`, so that other models of them reuse their outputs)."""
    if times and task.kind != "survival":
        raise ConfigError(f"--times is for survival models; this one's task is {task}")
    kept: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
    with encoded_once(model, data, ids, TokenCache.resolve(cache)):
        metrics = evaluate(
            model, data, ids, task, next(model.parameters()).device, inputs, lambda *drawn: kept.append(drawn)
        )
    horizons = None
    if task.kind == "survival" and kept:
        extra, horizons = survival_scores(cast(LegoModel, model), data, ids, kept[0][0], times)
        metrics.update(extra)
    if plot is not None and kept:
        files = [data.folder.root, *data.folder.files()]  # what the figure must never replace
        plot_task(task, *kept[0], plot, title, inputs=files, calibration=horizons)
    return metrics


def evaluate_model(
    model: nn.Module,
    data_dir: str | os.PathLike[str],
    split: str = "test",
    seed: int | None = None,
    splits: dict[str, str] | None = None,
    allow_overlap: bool = False,
    plot: str | os.PathLike[str] | None = None,
    cache: TokenCache | bool | None = True,
    time_unit: str | None = None,
    times: Sequence[float] = (),
) -> dict[str, Any]:
    """Metrics of any model on one split of a labelled dataset folder (splits.csv, or the seeded split the model
    -- or all its blocks -- was trained with). Samples any of its blocks was trained or validated on are refused
    (`allow_overlap`: scored, with a warning in the result). `plot`: also draw the split's figure there."""
    data, task, modalities = labelled_data(
        cast(LegoModel, model), data_dir, training_seed_of(model) if seed is None else seed, splits, time_unit
    )
    ids = (
        data.ids(split, modalities)
        if split != "all"
        else [i for s in ("train", "val", "test") for i in data.ids(s, modalities)]
    )
    warnings = (
        [] if split in ("train", "val", "all") else refuse_overlap(provenance_of(model), ids, split, allow_overlap)
    )
    warnings += _undefined(data, task, ids, split)
    return {
        "split": split,
        "split_source": data.split_source,
        "samples": len(ids),
        "warnings": warnings,
        **_score(
            model, data, ids, task, plot=plot, title=f"{split} split ({data.split_source})", cache=cache, times=times
        ),
    }


def _undefined(data: SplitData, task: TaskSpec, ids: Sequence[str], split: str) -> list[str]:
    """A warning when the split's AUC is undefined (its samples hold one class only)."""
    note = undefined_auc(task, data.labels.select(ids), split) if ids else None
    return [note] if note else []


def provenance_of(model: nn.Module) -> dict[str, Any]:
    """A model's provenance; an adapted model's is its base's."""
    return getattr(model, "provenance", None) or getattr(getattr(model, "base", None), "provenance", None) or {}


def training_seed_of(model: nn.Module) -> int:
    """The seed of the split the model (or its blocks) trained on, as its provenance records it; 0 when none."""
    found = training_seed(provenance_of(model))
    return 0 if found is None else found


def parameter_counts(model: nn.Module) -> dict[str, float]:
    """Trainable and total parameters and the trainable share in percent; for an adapter also the parameters one
    sample uses (one modality set: MoRA's shared A and one B per available modality at most, SSF's one scale and
    shift per site; a complete sample uses none unless SSF's `train_complete`), the share of all sets, and the
    adapter's size against the layers it adapts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts = {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}
    adapters = getattr(model, "adapters", None)
    if adapters:
        adapter = adapters[-1]
        all_sets = sum(p.numel() for p in adapter.parameters())
        sets, shared = adapter.sets, adapter.shared_parameters()
        one_set = shared + (all_sets - shared) // adapter.trained_sets  # SSF's complete set may be no parameter
        modules = canonical_modules(cast(nn.Module, model.base))
        adapted = sum(p.numel() for name in adapter.placement for p in modules[name].parameters())
        counts.update(
            {
                "adapter_one_set": one_set,
                "adapter_all_sets": all_sets,
                "sets": sets,
                "percent_one_set": 100.0 * one_set / total,
                "percent_all_sets": 100.0 * all_sets / total,
                "adapted_layers": adapted,
                "overhead_vs_adapted_layers": all_sets / adapted if adapted else 0.0,
            }
        )
    return counts


def dummies_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each modality's dummy input: its block's training mean (input shift), zero after standardisation."""
    blocks = cast(LegoModel, model).blocks
    return {m: b.input_shift.detach().cpu() for m, b in blocks.items() if b.input_shift.numel()}


def missing_protocol(
    model: nn.Module,
    data: SplitData,
    modalities: Sequence[str],
    splits: Sequence[str],
    independent: str | None,
    rate: float | None,
    split: float,
    seed: int,
):
    """The batch rewriter for a protocol: MoRA's (`rate` eta shared between the modalities, exact counts per split)
    or independent per-modality rates (`independent`, e.g. tab=0.3); with neither, only the modalities absent from
    the data become dummies."""
    dummies = dummies_of(model)
    if independent:
        rates = MissingRates.parse(independent, seed)
        rates.check(modalities)
        return lambda batches, ids: rates.apply(batches, ids, modalities, dummies)
    if not rate:
        return lambda batches, ids: MissingRates({}, seed).apply(batches, ids, modalities, dummies)
    protocol = MissingSplit(rate, split, seed)
    protocol.check(modalities)
    complete = [i for i in data.labels.ids if all(i in data.folder.ids_of(m) for m in modalities)]
    return protocol.applier({s: data.ids(s, modalities) for s in splits}, complete, modalities, dummies)


def prepare_adaptation(
    model: nn.Module,
    method: str,
    rank: int = DEFAULT_RANK,
    at: str | None = None,
    train_head: bool | None = None,
    train_complete: bool = False,
) -> nn.Module:
    """The model ready for one way of adapting to missing modalities: `head` (only the head trains), `mora` (the
    adapter and the head), `ssf` (only the adapter, head and base frozen as the SSF paper does, unless
    `train_head`), any other registered adapter, or `full` (everything trains). SSF learns scale and shift sets for
    the combinations with a modality missing, complete samples keeping the pretrained model (Reza et al.,
    arXiv:2310.03986), unless `train_complete` (SSF only) learns one for the complete combination too."""
    return prepared_for(model, AdaptConfig(method, rank, at, train_head, train_complete))


def prepared_for(model: nn.Module, settings: AdaptConfig) -> nn.Module:
    """The model ready for `settings`'s adaptation (`prepare_adaptation`): the base frozen but for what it trains,
    the method's adapter (from the registry) attached at `settings.at` or its default sites."""
    method = settings.method
    if method == "full":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    trains_head = method == "head"
    if method in adapter_names():
        cls = adapter_class(method)
        model = attach(model, cls(list(cast(LegoModel, model).modalities), **settings.adapter_kwargs()), settings.at)
        trains_head = cls.trains_head if settings.train_head is None else settings.train_head
    if trains_head:
        model.head.requires_grad_(True)
    return model


def adapt(
    model: nn.Module,
    data_dir: str | os.PathLike[str],
    method: str | AdaptConfig = "mora",
    *,
    config: TrainConfig = ADAPT_TRAINING,
    splits: dict[str, str] | None = None,
    progress: bool = True,
    allow_overlap: bool = False,
    cache: TokenCache | bool | None = True,
    time_unit: str | None = None,
    **settings: Any,
) -> tuple[nn.Module, TrainResult, dict[str, Any]]:
    """Train a missing-modality adaptation on a dataset folder. `method`: an `AdaptConfig`, or a method's name with
    its settings as keywords (`rank`, `at`, `train_missing`, `missing_rate`, ..., the config's fields). Default
    protocol, MoRA's: a total missing rate eta shared between the modalities on the training and validation splits,
    and the test rate (default: the same) for the reported test metrics; or independent per-modality rates. Dummies
    are the training means. `train_complete` (SSF only): also learn a scale and shift set for samples with every
    modality, which otherwise keep the base's predictions."""
    adaptation = method if isinstance(method, AdaptConfig) else AdaptConfig(method, **settings)
    if settings and isinstance(method, AdaptConfig):
        adaptation = replace(method, **settings)
    data, task, modalities = labelled_data(cast(LegoModel, model), data_dir, config.seed, splits, time_unit)
    warnings = refuse_overlap(provenance_of(model), data.ids("test", modalities), "test", allow_overlap)
    train_inputs = missing_protocol(
        model,
        data,
        modalities,
        ("train", "val"),
        adaptation.train_missing,
        adaptation.missing_rate,
        adaptation.missing_split,
        config.seed,
    )
    # test draws use seed + 1, independent of the training draws, and the same as `evaluate_missing` makes
    test_rate = adaptation.missing_rate if adaptation.test_missing_rate is None else adaptation.test_missing_rate
    test_inputs = missing_protocol(
        model,
        data,
        modalities,
        ("test",),
        adaptation.test_missing or adaptation.train_missing,
        test_rate,
        adaptation.missing_split,
        config.seed + 1,
    )
    torch.manual_seed(config.seed)  # the adapter's initial weights are the seed's, whatever ran before
    prepared = prepared_for(model, adaptation)
    if adaptation.method == "full" and config.encoders == "auto":  # "full" trains everything, encoders included
        config = replace(config, encoders="finetune")
    counts = parameter_counts(prepared)
    result = train_model(
        prepared,
        data,
        task,
        config,
        progress,
        label=f"adapting ({adaptation.method})",
        inputs=train_inputs,
        eval_inputs=test_inputs,
        cache=TokenCache.resolve(cache),
    )
    return prepared.cpu().eval(), result, {**counts, "warnings": warnings}


def evaluate_missing(
    model: nn.Module,
    data_dir: str | os.PathLike[str],
    missing: str | None,
    split: str = "test",
    seed: int | None = None,
    allow_overlap: bool = False,
    missing_rate: float | None = None,
    missing_split: float = DEFAULT_MISSING_SPLIT,
    plot: str | os.PathLike[str] | None = None,
    cache: TokenCache | bool | None = True,
    time_unit: str | None = None,
    times: Sequence[float] = (),
) -> dict[str, Any]:
    """Metrics of a model (adapted or not) on a split, with modalities made missing: MoRA's protocol at total rate
    `missing_rate`, or independent per-modality rates `missing`; the split is the one the model was trained with
    unless `seed` says otherwise, and seen samples are refused as above."""
    seed = training_seed_of(model) if seed is None else seed
    data, task, modalities = labelled_data(cast(LegoModel, model), data_dir, seed, time_unit=time_unit)
    drawn_over = ("train", "val", "test") if split == "all" else (split,)
    ids = [i for s in drawn_over for i in data.ids(s, modalities)]
    inputs = missing_protocol(
        model, data, modalities, drawn_over, missing, None if missing else missing_rate, missing_split, seed + 1
    )
    warnings = (
        [] if split in ("train", "val", "all") else refuse_overlap(provenance_of(model), ids, split, allow_overlap)
    )
    warnings += _undefined(data, task, ids, split)
    metrics = _score(
        model, data, ids, task, inputs, plot, f"{split} split ({data.split_source}), modalities missing", cache, times
    )
    protocol = (
        {"missing": missing} if missing else {"missing_rate": missing_rate or 0.0, "missing_split": missing_split}
    )
    return {
        "split": split,
        "split_source": data.split_source,
        "samples": len(ids),
        **protocol,
        "warnings": warnings,
        **metrics,
    }
