"""Shared fixtures: small blocks (fast on 2 CPU cores) and a user-defined encoder class."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from legokit.wrap import wrap_builtin

SMALL = dict(latent=(8, 16), depth=2, device="cpu", dim_head=16)


class VisitEncoder(nn.Module):
    """A user's own encoder: token-wise projection of a visit sequence. Never importable by a subprocess."""

    def __init__(self, features: int = 6, width: int = 12):
        super().__init__()
        self.proj = nn.Linear(features, width)
        self.mix = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.tanh(self.proj(x)))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Encoder outputs go to a folder of this test session, never to the user's cache (`legokit.cache`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEGOKIT_CACHE", str(tmp_path_factory.mktemp("legokit-cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tests' models are tiny: one CPU thread, here and in the processes they start, as legokit's own policy
    picks for small latents; a shared machine then slows the suite by its fair share, not by spinning threads."""
    from legokit.threads import ThreadChoice, apply_threads

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        apply_threads(ThreadChoice(1, "tests"))
        yield


@pytest.fixture
def snn_block():
    torch.manual_seed(0)
    return wrap_builtin("snn", None, "tab", "survival:4", {"in_features": 10, "hidden": 16}, **SMALL)


@pytest.fixture
def abmil_block():
    torch.manual_seed(1)
    return wrap_builtin("abmil", None, "img", "multiclass:3", {"in_features": 5, "hidden": 16, "attention": 8}, **SMALL)


@pytest.fixture
def mlp_block():
    torch.manual_seed(2)
    return wrap_builtin(
        "mlp", None, "seq", "multilabel:2", {"in_features": 4, "hidden": 16}, input_shape=(None, 4), **SMALL
    )


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter that has legokit but none of the tests' classes."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=300
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real console entry point, in a fresh process."""
    return subprocess.run([sys.executable, "-m", "legokit.cli", *args], capture_output=True, text=True, timeout=300)


def cli_here(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI's `main` in this process, output captured: for tests that need no fresh interpreter (each start
    costs seconds of torch import); the entry point itself is exercised through `run_cli` elsewhere."""
    from legokit.cli.commands import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def legokit_warnings():
    """Messages of the `legokit` logger (which may not propagate to pytest's caplog)."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("legokit")
    handler, level = Keep(logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
