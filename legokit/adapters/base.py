"""What MoRA and SSF share: adapter sites wrapped around modules of any model, the per-sample modality mask they
read while the model runs, and `Adapted`, a model with adapters attached."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from legokit.data.batch import ModalityBatch
from legokit.encoders.stack import bounded_int
from legokit.errors import ConfigError, ShapeError
from legokit.nn.layers import UpdateLayer

if TYPE_CHECKING:
    from legokit.interface import LegoModel
    from legokit.nn.block import LegoBlock
    from legokit.tasks import TaskSpec


def site_key(name: str) -> str:
    """A module path as a ModuleDict key (dots are not allowed there)."""
    return name.replace(".", "__")


def _unwrap(module: nn.Module) -> nn.Module:
    while isinstance(module, Sited):
        module = module.inner
    return module


def _child(module: nn.Module, part: str) -> nn.Module:
    if part.isdigit() and isinstance(module, (nn.Sequential, nn.ModuleList)):
        return module[int(part)]
    return getattr(module, part)


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The module at a name of the original model, looking through adapter wrappers (outermost wrapper returned)."""
    module = model
    for part in name.split(".") if name else []:
        module = _child(_unwrap(module), part)
    return module


def canonical_modules(model: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """Every module by its name in the original model (adapter wrappers are transparent), innermost modules."""
    found: dict[str, nn.Module] = {}
    for name, child in _unwrap(model).named_children():
        path = f"{prefix}.{name}" if prefix else name
        found[path] = _unwrap(child)
        found.update(canonical_modules(child, path))
    return found


def update_layers(model: nn.Module) -> list[str]:
    """Names of a legokit model's update layers, in order."""
    return [name for name, module in canonical_modules(model).items() if isinstance(module, UpdateLayer)]


def _prefixes(model: nn.Module, what: str) -> Mapping[str, str]:
    prefixes = getattr(model, "block_prefixes", None)
    if prefixes is None:
        raise ConfigError(f"{what!r} is defined for legokit models; for a {type(model).__name__} name the module(s)")
    return prefixes


def first_update_layers(model: nn.Module) -> list[str]:
    """The paper's "first block": the first update layer a sample's latent meets. For a fused model, the first
    block's first layer; for a merged model, the first layer of every block (each block starts its own latent)."""
    prefixes = _prefixes(model, "first")
    first = cast("list[str]", model.first_blocks)  # a legokit model (it has block prefixes): `LegoModel.first_blocks`
    return [f"{prefixes[m]}layers.0" for m in first]


def token_projections(model: nn.Module) -> list[str]:
    """Where the input flows into a legokit model: the key/value projection of every block's first update step,
    which reads that block's encoder tokens (the latent the queries come from is the same for every sample)."""
    names = [f"{prefix}layers.0.attention.to_kv" for prefix in _prefixes(model, "tokens").values()]
    modules = canonical_modules(model)
    return [name for name in names if name in modules]


def resolve_sites(model: nn.Module, at: str | Sequence[str]) -> list[str]:
    """Module names from `tokens` (every block's first key/value projection), `first` (the first update layer),
    `all` (every update layer), or explicit names (a list or comma-separated)."""
    if at == "tokens":
        return token_projections(model)
    if at == "first":
        return first_update_layers(model)
    if at == "all":
        names = update_layers(model)
        if not names:
            raise ConfigError(
                f"'all' means every LegoBlock update layer; a {type(model).__name__} has none: name modules"
            )
        return names
    names = [n.strip() for n in at.split(",")] if isinstance(at, str) else list(at)
    modules = canonical_modules(model)
    for name in names:
        if name not in modules:
            close = [m for m in modules if m.endswith(name.split(".")[-1])][:3]
            raise ConfigError(f"no module {name!r} in the model" + (f"; similar: {', '.join(close)}" if close else ""))
    return names


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` where `name` (a name of the original model) is; returns the module that was there."""
    *path, leaf = name.split(".")
    parent = _unwrap(find_module(model, ".".join(path)))
    old = _child(parent, leaf)
    if leaf.isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList)):
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)
    return old


MAX_MODALITIES = 16  # SSF keeps a parameter set per combination of modalities: 2^16 at this cap
MAX_SITE_WIDTH = 2**24  # what an adapter file's site sizes may ask for


class Adapter(nn.Module):
    """Parameters for a set of sites, one set per site, conditioned on which modalities each sample has. A method
    (MoRA, SSF, a user's) subclasses it and registers with `legokit.adapters.registry.register_adapter`; the hooks
    below are all that `attach`, `prepare_adaptation` and adapter files call on it."""

    kind = "adapter"  # the registered name, which adapter files record as their `type`
    summary = ""  # a few words for help texts (`registry.describe_adapters`)
    options: tuple[str, ...] = ()  # the `AdaptConfig` settings its constructor takes by keyword (MoRA: rank)
    trains_head = False  # whether the model's head trains with it unless `train_head` says otherwise
    default_at = "first"  # where it is attached unless told (`resolve_sites`)

    def __init__(self, modalities: Sequence[str]):
        super().__init__()
        if len(modalities) > MAX_MODALITIES:
            raise ConfigError(f"an adapter over {len(modalities)} modalities; legokit caps it at {MAX_MODALITIES}")
        if len(set(modalities)) != len(modalities) or not modalities:
            raise ConfigError(f"an adapter needs distinct modality names, got {list(modalities)}")
        self.modalities = tuple(modalities)
        self.sites = nn.ModuleDict()
        self.placement: list[str] = []
        self._mask: torch.Tensor | None = None

    def mask_for(self, x: torch.Tensor) -> torch.Tensor:
        """The (b, M) availability mask bound for this forward pass, checked against the batch at this site."""
        if self._mask is None:
            raise ShapeError("the adapter has no modality mask: run the model through Adapted(..., modality_mask=...)")
        if self._mask.shape[0] != x.shape[0]:
            raise ShapeError(f"modality mask is for {self._mask.shape[0]} samples, the input here has {x.shape[0]}")
        return self._mask

    @contextmanager
    def bound(self, mask: torch.Tensor) -> Iterator[None]:
        """Make the (b, M) bool mask available to every site of this adapter while the model runs."""
        if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[1] != len(self.modalities):
            raise ShapeError(
                f"modality mask must be bool (batch, {len(self.modalities)}) for modalities "
                f"{', '.join(self.modalities)}; got {mask.dtype} {tuple(mask.shape)}"
            )
        self._mask = mask
        try:
            yield
        finally:
            self._mask = None

    def expand(self, model: nn.Module, targets: list[str]) -> list[str]:
        """The modules that get a site, given the targeted ones (MoRA: themselves; SSF: the layers inside)."""
        return targets

    def make_site(self, module: nn.Module) -> nn.Module:
        """A fresh site for `module`, of the sizes it takes."""
        return self.build_site(self.sizes_for(module))

    def build_site(self, sizes: Sequence[int]) -> nn.Module:
        """A fresh site of these sizes (as `config()` records them), for a module or, on the meta device, a file."""
        raise NotImplementedError

    def sizes_for(self, module: nn.Module) -> list[int]:
        """The two sizes a site for `module` has (as `config()` records them), by arithmetic on the module alone."""
        raise NotImplementedError

    def site_sizes(self, site: nn.Module) -> list[int]:
        """The sizes a site has, as `config()` records them."""
        raise NotImplementedError

    def site_shapes(self, sizes: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """Each tensor of a site of these sizes, by name in the site's state dict, and its shape: arithmetic alone, so
        that an adapter file is checked before anything is built from it."""
        raise NotImplementedError

    def wrap(self, name: str, module: nn.Module) -> nn.Module:
        """`module` (at `name`) wrapped so that its site acts on it (a `Sited` subclass)."""
        raise NotImplementedError

    @classmethod
    def check_sizes(cls, key: str, sizes: Sequence[Any]) -> None:
        """Refuse a file's two site sizes that this method cannot build (default: positive widths under the cap)."""
        for size in sizes:
            bounded_int(f"site {key} width", size, MAX_SITE_WIDTH)

    @classmethod
    def read_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor settings (`options`) an adapter file's config records (default: those it holds, which the
        constructor then checks); a ConfigError when they cannot be right."""
        return {option: config[option] for option in cls.options if option in config}

    def check_stored(self, sites: Iterable[str], state: Mapping[str, torch.Tensor]) -> None:
        """Refuse a file's tensors (`state`, of the planned shapes) that the method's invariants forbid."""

    @property
    def sets(self) -> int:
        """How many parameter sets it holds, one per modality pattern it tells apart (MoRA: one per modality)."""
        return len(self.modalities)

    @property
    def trained_sets(self) -> int:
        """How many of the sets are parameters (SSF's complete combination may be the fixed identity)."""
        return self.sets

    def shared_parameters(self) -> int:
        """Parameters every sample uses whatever its modalities (MoRA's shared down-projections)."""
        return 0

    def config(self) -> dict[str, Any]:
        """What an adapter file records besides its tensors: type, modalities, placement, each site's sizes, and the
        constructor settings (`options`, read from the attributes of the same names)."""
        sites = {key: self.site_sizes(site) for key, site in self.sites.items()}
        return {
            "type": self.kind,
            "modalities": list(self.modalities),
            "placement": list(self.placement),
            "sites": sites,
            **{option: getattr(self, option) for option in self.options},
        }


class Sited(nn.Module):
    """A module with an adapter site around it; the original stays in `.inner`."""

    def __init__(self, inner: nn.Module, adapter: Adapter, key: str):
        super().__init__()
        self.inner = inner
        self.key = key
        self._adapter = [adapter]  # a list, so that the adapter is not registered twice as a child

    def __getattr__(self, name: str) -> Any:
        """Attributes the wrapped module has (a parent may read `norm.eps` or `linear.weight` directly)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("inner")
            if inner is None:
                raise
            return getattr(inner, name)

    @property
    def adapter(self) -> Adapter:
        return self._adapter[0]

    @property
    def site(self) -> nn.Module:
        return self.adapter.sites[self.key]


def availability(inputs: Mapping[str, ModalityBatch | torch.Tensor], modalities: Sequence[str]) -> torch.Tensor:
    """(b, M) from a legokit input mapping: a modality is available where it is given, present and observed."""
    given = next(iter(inputs.values()))
    size = (given.x if isinstance(given, ModalityBatch) else given).shape[0]
    columns = []
    for name in modalities:
        value = inputs.get(name)
        if value is None:
            columns.append(torch.zeros(size, dtype=torch.bool))
        elif isinstance(value, ModalityBatch):
            columns.append(value.available().cpu())
        else:
            columns.append(torch.ones(size, dtype=torch.bool))
    return torch.stack(columns, dim=1)


class Adapted(nn.Module):
    """A base model with adapters attached. forward(*args, modality_mask=None, **kwargs): the mask (b, M) is given,
    or, for legokit models, read from the inputs (which modalities each sample really has)."""

    def __init__(self, base: nn.Module, adapters: Sequence[Adapter] = ()):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleList()
        for adapter in adapters:
            attach(self, adapter)

    # the model interface (`legokit.interface.LegoModel`) is the base's: an adapted model trains, predicts and is
    # evaluated like any other
    @property
    def _model(self) -> LegoModel:
        """The base as the legokit model it is (the properties below are defined for legokit models only)."""
        return cast("LegoModel", self.base)

    @property
    def modalities(self) -> list[str]:
        return list(self._model.modalities)

    @property
    def task(self) -> TaskSpec:
        return self._model.task

    @property
    def blocks(self) -> Mapping[str, LegoBlock]:
        return self._model.blocks

    @property
    def head(self) -> nn.Module:
        return self._model.head

    @property
    def provenance(self) -> dict[str, Any]:
        return self._model.provenance

    @property
    def source_sha256(self) -> str | None:
        return getattr(self.base, "source_sha256", None)

    def forward(self, *args: Any, modality_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        with _bind_all(cast("Sequence[Adapter]", self.adapters), args, modality_mask):  # `attach` adds Adapters only
            return self.base(*args, **kwargs)


@contextmanager
def _bind_all(adapters: Sequence[Adapter], args: tuple, given: torch.Tensor | None) -> Iterator[None]:
    if not adapters:
        yield
        return
    adapter, rest = adapters[0], adapters[1:]
    if given is not None:
        mask = given
    elif args and isinstance(args[0], Mapping):
        mask = availability(args[0], adapter.modalities)
    else:
        raise ShapeError("this model's inputs do not say which modalities each sample has: pass modality_mask=")
    device = next(adapter.parameters()).device
    with adapter.bound(mask.to(device)), _bind_all(rest, args, given):
        yield


def attach(model: nn.Module, adapter: Adapter, at: str | Sequence[str] | None = None) -> Adapted:
    """Wrap the adapter's sites into the model (in place) and return it as an `Adapted` model. `at`: `first`,
    `all` or module names; an adapter loaded from a file already knows its placement."""
    adapted = model if isinstance(model, Adapted) else Adapted(model)
    base = adapted.base
    names = adapter.placement or adapter.expand(base, resolve_sites(base, at or adapter.default_at))
    modules = canonical_modules(base)
    for name in names:
        if name not in modules:
            raise ConfigError(f"the adapter's site {name!r} is not a module of this model")
    _check_fit(adapter, base, names)
    for name in names:
        key = site_key(name)
        original = find_module(base, name)
        if key not in adapter.sites:
            adapter.sites[key] = adapter.make_site(original)
        replace_module(base, name, adapter.wrap(name, original))
    adapter.placement = list(names)
    device = next(base.parameters()).device
    adapter.to(device)
    adapted.adapters.append(adapter)
    return adapted


def _check_fit(adapter: Adapter, base: nn.Module, names: Sequence[str]) -> None:
    """Sites the adapter already has (loaded from a file) must be of the sizes their modules take, checked before
    any module is replaced: a site of other widths would fail only later, inside the model's forward."""
    for name in names:
        key = site_key(name)
        if key not in adapter.sites:
            continue
        wanted, has = adapter.sizes_for(find_module(base, name)), adapter.site_sizes(adapter.sites[key])
        if wanted != has:
            raise ConfigError(f"the adapter's site {name!r} has sizes {has}; that module takes {wanted}")


def detach(adapted: Adapted, adapter: Adapter | None = None) -> nn.Module:
    """Remove an adapter (default: the last attached) and restore the modules it wrapped; returns the base model
    when no adapter is left, else the Adapted model."""
    if not adapted.adapters:
        return adapted.base
    index = (
        len(adapted.adapters) - 1
        if adapter is None
        else next((i for i, a in enumerate(adapted.adapters) if a is adapter), None)
    )
    if index is None:
        raise ConfigError("that adapter is not attached to this model")
    if index != len(adapted.adapters) - 1:
        raise ConfigError("detach adapters in the reverse order of attaching them")
    target = cast(Adapter, adapted.adapters[index])  # `attach` adds Adapters only
    for name in target.placement:
        module = find_module(adapted.base, name)
        if isinstance(module, Sited) and module.adapter is target:
            replace_module(adapted.base, name, module.inner)
    del adapted.adapters[index]
    return adapted if len(adapted.adapters) else adapted.base
