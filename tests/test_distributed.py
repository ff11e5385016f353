"""`legokit train` under torchrun: 2 CPU processes with gloo give what one process gives for the same global batch."""

from __future__ import annotations

import subprocess
import sys

import torch

from legokit import load
from legokit.data.bundled import write_pbc
from legokit.data.training import SplitData
from legokit.tasks import TaskSpec
from legokit.training.distributed import World
from legokit.training.trainer import predict_logits

FLAGS = [
    "--modality",
    "labs",
    "--encoder-kwargs",
    '{"hidden": 16, "dropout": 0.0}',
    "--latent",
    "8x16",
    "--epochs",
    "3",
    "--patience",
    "3",
    "--batch-size",
    "32",
    "--device",
    "cpu",
]


def test_a_world_shards_a_global_batch_by_rank():
    batch = list(range(7))
    shards = [World(rank, 2).shard(batch) for rank in range(2)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]
    assert World().shard(batch) == batch and World().main


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path):
    write_pbc(tmp_path / "data")
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "legokit.cli",
            "train",
            str(tmp_path / "data"),
            *FLAGS,
            "-o",
            str(tmp_path / "single.st"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "legokit.cli",
            "train",
            str(tmp_path / "data"),
            *FLAGS,
            "-o",
            str(tmp_path / "ddp.st"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr
    assert launched.stdout.count("wrote") == 1  # rank 0 alone reports and writes
    one, two = load(tmp_path / "single.st"), load(tmp_path / "ddp.st")
    assert one.provenance["trained"]["best_epoch"] == two.provenance["trained"]["best_epoch"]
    data = SplitData.load(tmp_path / "data", {"labs": (17,)}, TaskSpec("survival", 4), seed=0)
    ids = data.ids("test")
    assert torch.allclose(predict_logits(one, data, ids), predict_logits(two, data, ids), atol=1e-4)
    assert abs(one.provenance["trained"]["val"]["c_index"] - two.provenance["trained"]["val"]["c_index"]) < 1e-3
