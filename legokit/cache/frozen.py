"""A frozen pretrained encoder runs once per sample: a block's tokens are looked up by the encoder's and the sample's
content, and only the samples not found are encoded (then kept). Used while the encoder cannot change its output:
its parameters do not train and it runs in eval mode; an adapter inside it, or a program exported in train mode
(dropout drawn at every run), turns the cache off for that block."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from legokit.cache.keys import encoder_key, real_length, sample_keys
from legokit.cache.store import Entry, TokenCache
from legokit.encoders import FOREIGN
from legokit.progress import log, progress_bar
from legokit.torch_internals import op_schema, version_counter

PRETRAINED_MARKS = ("wrapped_from", "encoder_contract", "wrapped")  # provenance that `wrap` leaves on a block
# masked inputs are padded to a multiple of ROUNDING tokens and run ROUNDING-wide buckets at a fixed batch size: few
# distinct shapes, each measured once by the cost check (`encoders.cost`, about a second for a 6-layer BERT)
ROUNDING = 32
BATCH_TOKENS = 16384  # tokens per encoder run in the encoding pass (samples x padded length)


def pretrained(block: Any) -> bool:
    """Whether a block's encoder came from outside legokit (wrapped), rather than being trained with the block."""
    provenance = getattr(block, "provenance", None) or {}
    return block.config.encoder.name == FOREIGN or any(mark in provenance for mark in PRETRAINED_MARKS)


def frozen(block: Any) -> bool:
    """No parameter of the block's encoder trains."""
    return not any(p.requires_grad for p in block.encoder.parameters())


def _adapted(block: Any) -> bool:
    return any(type(m).__module__.startswith("legokit.adapters") for m in block.encoder.modules())


def _draws(node: Any) -> bool:
    """A graph node that draws random numbers: a seeded operator (bernoulli, randn, ...), but dropout only in train
    mode and attention only with a dropout rate (an eval-mode export keeps both, switched off)."""
    target = node.target
    if node.op != "call_function" or torch.Tag.nondeterministic_seeded not in getattr(target, "tags", ()):
        return False
    schema = op_schema(target)
    names = [a.name for a in schema.arguments] if schema is not None else []

    def argument(name: str, default: Any) -> Any:
        if name in node.kwargs:
            return node.kwargs[name]
        at = names.index(name) if name in names else len(node.args)
        return node.args[at] if at < len(node.args) else default

    if "train" in names:
        train = argument("train", True)
        return not isinstance(train, (bool, int)) or bool(train)
    if "dropout_p" in names:
        rate = argument("dropout_p", 0.0)
        return not isinstance(rate, (int, float)) or rate > 0
    return True


def _random(block: Any) -> bool:
    """An exported program that draws random numbers at every run (dropout exported in train mode, noise)."""
    graph = getattr(getattr(block.encoder, "graph", None), "graph", None)
    return graph is not None and any(_draws(node) for node in graph.nodes)


def cacheable(block: Any) -> bool:
    """A pretrained encoder whose outputs depend on its inputs alone: no adapter inside, not exported in train mode,
    no random operation in its program."""
    provenance = getattr(block, "provenance", None) or {}
    return (
        pretrained(block)
        and not _adapted(block)
        and not provenance.get("exported_in_train_mode")
        and not _random(block)
    )


def _tensors(block: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """What the encoder's output depends on besides its input: its parameters, and its buffers with the block's
    input standardisation."""
    return list(block.encoder.parameters()), [*block.encoder.buffers(), block.input_shift, block.input_scale]


def _versions(tensors: list[torch.Tensor]) -> list[int]:
    """In-place modification counters: a weight loaded or stepped since they were read makes them differ."""
    return [version_counter(t) for t in tensors]


class CachedTokens:
    """A block's token source backed by one encoder's cache (`LegoBlock.token_source`): the cache of the encoder as
    it is, keyed again when any of its tensors was modified in place (weights loaded: the key tells whether they
    changed) or the block moved to another kind of device."""

    def __init__(self, cache: TokenCache, block: Any, info: dict[str, str]):
        self.cache, self.info = cache, info
        self.key(block)

    def key(self, block: Any) -> None:
        self.store = self.cache.of(encoder_key(block), block.config.encoder.out_dim, self.info)
        self.device = block.input_shift.device.type
        parameters, buffers = _tensors(block)
        self.parameters, self.buffers = _versions(parameters), _versions(buffers)
        self.buffer_values = [b.detach().clone() for b in buffers]

    def unchanged(self, block: Any) -> bool:
        """Whether the encoder is still the one keyed: no parameter modified in place, and buffers written in place
        (as DistributedDataParallel broadcasts them at every step) still of the same values."""
        parameters, buffers = _tensors(block)
        if _versions(parameters) != self.parameters or block.input_shift.device.type != self.device:
            return False
        if _versions(buffers) != self.buffers:
            if len(buffers) != len(self.buffer_values) or not all(
                a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.detach(), b)
                for a, b in zip(buffers, self.buffer_values)
            ):
                return False
            self.buffers = _versions(buffers)
        return True

    def applies(self, block: Any, x: torch.Tensor) -> bool:
        """Only while the encoder cannot change its output: eval mode, no gradient reaches its parameters or its
        input; keyed again if it changed since its key was computed."""
        grad = torch.is_grad_enabled() and (x.requires_grad or not frozen(block))
        if block.encoder.training or grad:
            return False
        if not self.unchanged(block):
            self.key(block)
        return x.device.type == self.device

    def __call__(
        self, block: Any, x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        if not self.applies(block, x):
            return None
        keys = sample_keys(x.cpu(), None if mask is None else mask.cpu())
        entries = [self.store.get(key) for key in keys]
        missing: dict[str, int] = {}  # each missing sample once (the dummies of missing inputs are all one sample)
        for row, entry in enumerate(entries):
            if entry is None:
                missing.setdefault(keys[row], row)
        if missing:
            fresh = dict(zip(missing, _encode(block, x, mask, list(missing.values()))))
            for key, entry in fresh.items():
                self.store.put(key, entry)
            entries = [fresh[key] if entry is None else entry for key, entry in zip(keys, entries)]
        return _assemble(entries, block.config.encoder.out_dim, x.device)  # type: ignore[arg-type]


def _fit(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """The tensor cut or zero-padded to `width` along its token axis."""
    if tensor.shape[1] >= width:
        return tensor[:, :width]
    padded = tensor.new_zeros(tensor.shape[0], width, *tensor.shape[2:])
    padded[:, : tensor.shape[1]] = tensor
    return padded


def _padded_width(block: Any, longest: int) -> int:
    """How wide a batch whose longest sample has `longest` tokens runs: rounded up to ROUNDING where the encoder
    reads the padding mask (token ids; a program that takes a mask), within a text encoder's token limit."""
    longest = max(longest, 1)
    if block.config.text is None and not getattr(block.encoder, "takes_mask", False):
        return longest  # an encoder without a mask runs unpadded groups of equal length anyway
    rounded = -(-longest // ROUNDING) * ROUNDING
    return min(rounded, max(block.config.text.max_tokens, longest)) if block.config.text is not None else rounded


def _encode(block: Any, x: torch.Tensor, mask: torch.Tensor | None, rows: Sequence[int]) -> list[Entry]:
    """Run the encoder on these rows only, padded to their own longest sample (rounded, `_padded_width`), and keep
    each sample's tokens up to its last real one."""
    index = torch.tensor(list(rows), device=x.device)
    xs, ms = x.index_select(0, index), None if mask is None else mask.index_select(0, index)
    if ms is not None:
        width = _padded_width(block, int(real_length(ms).max()))
        xs, ms = _fit(xs, width), _fit(ms, width)
    # in full precision whatever the caller's autocast: an entry is the encoder's output, the same for every reader
    autocast = torch.amp.autocast_mode.is_autocast_available(x.device.type)
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False) if autocast else nullcontext():
        tokens, token_mask = block.encoder_tokens(xs, ms)
    tokens = tokens.float().cpu()
    lengths = [tokens.shape[1]] * len(rows) if token_mask is None else real_length(token_mask.cpu()).tolist()
    found = []
    for row, length in enumerate(lengths):
        real = torch.ones(length, dtype=torch.bool) if token_mask is None else token_mask[row, :length].cpu()
        found.append(Entry(tokens[row, :length].clone(memory_format=torch.contiguous_format), real.clone()))
    return found


def _assemble(entries: Sequence[Entry], width_e: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch of tokens (b, n, e) from per-sample entries: stacked with no mask when every sample has the same
    number of real tokens, else zero-padded with the padding marked False."""
    width = max([e.mask.shape[0] for e in entries] + [1])
    if all(e.mask.shape[0] == width and bool(e.mask.all()) for e in entries):
        return torch.stack([e.tokens for e in entries]).to(device), None
    tokens = torch.zeros(len(entries), width, width_e)
    mask = torch.zeros(len(entries), width, dtype=torch.bool)
    for row, entry in enumerate(entries):
        tokens[row, : entry.mask.shape[0]] = entry.tokens
        mask[row, : entry.mask.shape[0]] = entry.mask
    return tokens.to(device), mask.to(device)


def blocks_of(model: nn.Module) -> dict[str, Any]:
    blocks = getattr(model, "blocks", None)
    return dict(blocks) if blocks is not None else {}


@contextmanager
def cached_encoders(model: nn.Module, cache: TokenCache | None, training: bool = False) -> Iterator[list[str]]:
    """Give the model's blocks with a cacheable encoder (in `training`: one that is also frozen for the whole run)
    their cache for the duration; yields their modalities. Pending entries are written when it ends."""
    attached: list[Any] = []
    try:
        for block in blocks_of(model).values() if cache is not None else []:
            assert cache is not None
            if not cacheable(block) or (training and not frozen(block)):
                continue
            info = {"modality": block.modality, "encoder": _describe(block)}
            block.token_source = CachedTokens(cache, block, info)
            attached.append(block)
        yield [block.modality for block in attached]
    finally:
        for block in attached:
            block.token_source = None
        if cache is not None:
            cache.close()


@contextmanager
def encoded_once(
    model: nn.Module,
    data: Any,
    ids: Sequence[str],
    cache: TokenCache | None,
    training: bool = False,
    progress: bool = True,
) -> Iterator[dict[str, dict[str, float]]]:
    """`cached_encoders` with its encoding pass (`encode_ahead`) over `ids` done first: what train, eval and predict
    run their samples in; yields the pass's report (empty when no block is cached)."""
    with cached_encoders(model, cache, training) as cached:
        yield encode_ahead(model, data, ids, progress) if cached else {}


def _describe(block: Any) -> str:
    spec = block.config.encoder
    kind = "program" if spec.name == FOREIGN else spec.name
    contract = (getattr(block, "provenance", None) or {}).get("wrapped_from")
    return f"{kind}, {spec.out_dim}-d tokens" + (f", wrapped from {contract}" if contract else "")


def encode_ahead(
    model: nn.Module, data: Any, ids: Sequence[str], progress: bool = True, batch_size: int = 64
) -> dict[str, dict[str, float]]:
    """Encode, before any epoch, every sample of `ids` that a cached block has not seen: samples sorted by length
    and run in batches of similar length (little padding), with a progress bar (or a line every ~10 s off a
    terminal). `data` is a dataset folder (or a split of one). Returns per modality: samples found in the cache,
    samples encoded, seconds."""
    folder = getattr(data, "folder", data)
    report: dict[str, dict[str, float]] = {}
    for modality, block in blocks_of(model).items():
        source = getattr(block, "token_source", None)
        if not isinstance(source, CachedTokens):
            continue
        present = folder.ids_of(modality)
        having = [i for i in ids if i in present]
        todo: list[tuple[int, str]] = []
        for start in range(0, len(having), 1024):
            chunk = having[start : start + 1024]
            batch = folder.batch(chunk, [modality])[modality]
            keys = sample_keys(batch.x, batch.mask)
            lengths = [1] * len(chunk) if batch.mask is None else real_length(batch.mask).tolist()
            todo += [(int(n), i) for i, key, n in zip(chunk, keys, lengths) if key not in source.store]
        report[modality] = {"cached": len(having) - len(todo), "encoded": len(todo), "seconds": 0.0}
        if not todo:
            log.info("%s: the encoder outputs of all %d samples are in the cache", modality, len(having))
            continue
        if len(todo) < len(having):
            log.info(
                "%s: %d of %d samples' encoder outputs are in the cache", modality, len(having) - len(todo), len(having)
            )
        started = time.perf_counter()
        device = next(block.parameters()).device
        was_training = block.encoder.training
        block.encoder.eval()
        try:
            with progress_bar(f"encoding {modality}", len(todo), progress, "samples") as advance, torch.no_grad():
                for group in _groups(sorted(todo), batch_size, lambda n: _padded_width(block, n)):  # noqa: B023 - used in this iteration
                    batch = folder.batch(group, [modality])[modality]
                    mask = None if batch.mask is None else batch.mask.to(device)
                    block.tokens(batch.x.to(device), mask)
                    advance(len(group), "")
        finally:
            block.encoder.train(was_training)
        report[modality]["seconds"] = time.perf_counter() - started
    return report


def _groups(todo: Sequence[tuple[int, str]], batch_size: int, width: Callable[[int], int]) -> Iterator[list[str]]:
    """Ids in order of length, in batches of samples that run at one padded width, of a fixed size per width (at
    most `batch_size` samples and BATCH_TOKENS padded tokens): every full batch of a width has the same shape."""
    group: list[str] = []
    current = None
    for length, sample in todo:
        padded = width(length)
        if group and (padded != current or len(group) >= max(1, min(batch_size, BATCH_TOKENS // padded))):
            yield group
            group = []
        group.append(sample)
        current = padded
    if group:
        yield group
