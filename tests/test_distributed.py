"""`legokit train` under torchrun: 2 CPU processes with gloo give what one process gives for the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from legokit import load
from legokit.data.bundled import write_pbc
from legokit.data.training import SplitData
from legokit.tasks import TaskSpec
from legokit.training.distributed import World
from legokit.training.trainer import predict_logits

from .test_slides import write_slides

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


# a training run that counts the bags each process reads (the folder keeps none in memory), then writes the count
COUNTING = """
import json, os, sys
import legokit.data.folder as folder
from legokit.cli.commands import main
folder.KEEP_BYTES = 0
read = []
real = folder.load_bag
folder.load_bag = lambda path, *args, **kwargs: read.append(path.name) or real(path, *args, **kwargs)
code = main(sys.argv[2:])
with open(f"{sys.argv[1]}.{os.environ.get('RANK', 'single')}", "w") as out:
    json.dump(read, out)
sys.exit(code)
"""


def test_each_of_two_gloo_processes_reads_half_of_the_slides(tmp_path):
    write_slides(tmp_path / "data", [int(n) for n in torch.randint(200, 900, (48,), generator=torch.Generator())])
    (tmp_path / "count.py").write_text(COUNTING, encoding="utf-8")
    flags = [
        "train", str(tmp_path / "data"), "--modality", "wsi", "--encoder", "abmil", "--encoder-kwargs",
        '{"hidden": 8, "attention": 8}', "--latent", "4x8", "--task", "survival:4", "--epochs", "2",
        "--batch-size", "8", "--workers", "0", "--max-tokens", "128", "--device", "cpu",
    ]  # fmt: skip
    script = [str(tmp_path / "count.py"), str(tmp_path / "reads")]
    single = subprocess.run(
        [sys.executable, *script, *flags, "-o", str(tmp_path / "one.st")], capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *script, *flags,
         "-o", str(tmp_path / "two.st")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    alone = json.loads((tmp_path / "reads.single").read_text())
    ranks = [json.loads((tmp_path / f"reads.{rank}").read_text()) for rank in (0, 1)]
    # normalisation, every epoch's steps and validation, and the final val and test scores: each read once in all
    assert sorted(ranks[0] + ranks[1]) == sorted(alone)
    assert all(abs(len(reads) - len(alone) / 2) <= 8 for reads in ranks)  # each a half, up to uneven shares
    one, two = load(tmp_path / "one.st"), load(tmp_path / "two.st")
    assert abs(one.provenance["trained"]["val"]["c_index"] - two.provenance["trained"]["val"]["c_index"]) < 0.05
