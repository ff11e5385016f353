"""How many CPU threads torch's kernels should use, so that a shared machine slows legokit down by its fair share,
not by 5-20x: torch's default of one thread per core spins those threads against every other busy process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from legokit.errors import ConfigError, positive_int
from legokit.progress import log

# latents up to this many cells (32x32) gain nothing measurable from a second thread (docs/benchmarks.md, "Threads")
SMALL_LATENT = 32 * 32
# an encoder this large (a pretrained one: MiniLM has 22M parameters) dominates the work: it gets every idle CPU
LARGE_ENCODER = 1_000_000


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and why it was chosen."""

    threads: int
    reason: str


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and `taskset` narrow), else all."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def busy_cpus() -> float:
    """Other work on the machine: the 1-minute load average (0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def _omp_threads(text: str) -> int:
    """OMP_NUM_THREADS's outer level as a positive integer (any length of digits); else a ConfigError."""
    digits = text.lstrip("0")
    if not (text.isascii() and text.isdigit()) or not digits:
        raise ConfigError(f"OMP_NUM_THREADS must be a positive integer, got {text[:20]!r}")
    return int(digits) if len(digits) <= 18 else 10**18  # past any CPU count; int() refuses 4,300+ digits


def choose_threads(
    requested: int | None = None,
    latent_cells: int | None = None,
    environ: Mapping[str, str] | None = None,
    cpus: int | None = None,
    busy: float | None = None,
    encoder_parameters: int = 0,
) -> ThreadChoice:
    """`--threads` if given, else OMP_NUM_THREADS if set, else 1 for small latents with small encoders, else the
    usable CPUs that the load average leaves idle (at least 1): an encoder of LARGE_ENCODER parameters or more
    (a pretrained one) costs far more per sample than the latent."""
    if requested is not None:
        return ThreadChoice(positive_int("--threads", requested), "--threads")
    environ = os.environ if environ is None else environ
    text = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # OpenMP's nested form 4,2: the outer level
    if text:
        return ThreadChoice(_omp_threads(text), "OMP_NUM_THREADS")
    if latent_cells is not None and latent_cells <= SMALL_LATENT and encoder_parameters < LARGE_ENCODER:
        return ThreadChoice(1, f"latent of {latent_cells} cells: a second thread gains nothing")
    cpus = usable_cpus() if cpus is None else cpus
    busy = busy_cpus() if busy is None else busy
    idle = max(1, min(cpus, cpus - int(busy + 0.5)))
    return ThreadChoice(idle, f"{idle} of {cpus} usable CPUs idle (load {busy:.1f})")


def capped(choice: ThreadChoice, cpus: int | None = None) -> ThreadChoice:
    """The choice within the usable CPUs, with a warning when it asked for more: torch crashes (a segfault) on
    counts far above them, and threads beyond the CPUs only contend with each other."""
    cpus = usable_cpus() if cpus is None else cpus
    if choice.threads <= cpus:
        return choice
    log.warning(
        "%s asks for %d CPU threads; this process may use %d CPUs: using %d", choice.reason, choice.threads, cpus, cpus
    )
    return ThreadChoice(cpus, f"{choice.reason} {choice.threads}, capped to the {cpus} usable CPUs")


def apply_threads(choice: ThreadChoice, cpus: int | None = None) -> ThreadChoice:
    """Set torch's intra-op thread count for this process, capped to the usable CPUs; returns what was set."""
    applied = capped(choice, cpus)
    if torch.get_num_threads() != applied.threads:
        torch.set_num_threads(applied.threads)
    return applied
