"""Running under `torchrun`: torch.distributed set up from its environment (gloo on CPU, NCCL on CUDA), each
process training on its share of every global batch, and only rank 0 logging and writing artifacts."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place: rank among `size` processes."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share of a global batch: every size-th item, starting at its rank."""
        return list(items[self.rank :: self.size])

    def unshard(self, shares: Sequence[Sequence[T]]) -> list[T]:
        """The items whose shares (`shard`, one per rank, in rank order) these are, in their first order."""
        items: list[T] = []
        for position in range(max((len(s) for s in shares), default=0)):
            items.extend(share[position] for share in shares if position < len(share))
        return items

    def gathered(self, item: T) -> list[T]:
        """Every process's `item`, in rank order (all_gather_object; a list of one outside torchrun)."""
        if self.size == 1:
            return [item]
        found: list[T | None] = [None] * self.size
        dist.all_gather_object(found, item)
        return cast("list[T]", found)


def world() -> World:
    """The current process group, or a world of one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched() -> bool:
    """True when started by torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "auto") -> World:
    """Join the process group torchrun describes (once); CUDA processes take the GPU of their LOCAL_RANK."""
    if not launched():
        return World()
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world()


def device_for(device: str) -> str:
    """Under torchrun with CUDA, each process uses its own GPU."""
    if launched() and torch.cuda.is_available() and device in ("auto", "cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device: str = "auto") -> Iterator[World]:
    """The process group for the duration of a command (a world of one outside torchrun), left on any exit."""
    place = setup(device)
    try:
        yield place
    finally:
        teardown()
