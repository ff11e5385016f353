"""Bring your own encoder: real encoder families (random weights, small configs) wrapped from files through the CLI.

    python -m benchmarks.encoder_families [--json out.json]

For each family: the file a user would have (a Hugging Face folder, a .pt2, a TorchScript archive, a pickled
module, sklearn weights), `legokit wrap` on it (timed), the block's file size, and whether the block reloaded in a
fresh process (where neither the encoder's class nor transformers is importable) gives bit-identical outputs.
The tests (`tests/test_encoder_families.py`) walk the same families through train, merge and predict.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.export import Dim

from legokit.data.bundled import write_pbc

LATENT = ["--latent", "16x16", "--device", "cpu"]
WORDS = {"bili": ("bilirubin", 0.5), "albumin": ("albumin", 3.5), "protime": ("prothrombin", 2.4)}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_family_data(folder: Path) -> Path:
    """The PBC landmark folder (labs.csv, visits/, labels.csv) plus what the families read: `tab.csv` (the labs
    again, for tabular encoders), `notes.csv` (a short clinical note per patient, written from the labs and signs)
    and `img/ID.safetensors` (a 3x16x16 picture per trial patient whose brightness follows bilirubin)."""
    write_pbc(folder)
    labs = _rows(folder / "labs.csv")
    (folder / "tab.csv").write_text((folder / "labs.csv").read_text(encoding="utf-8"), encoding="utf-8")
    with open(folder / "notes.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        for row in labs:
            words = [f"{name} {'high' if float(row[col]) > cut else 'low'}" for col, (name, cut) in WORDS.items()]
            words += [
                f"{sign} {'present' if float(row[sign]) > 0 else 'absent'}" for sign in ("ascites", "edema", "spiders")
            ]
            words.append(f"stage {int(float(row['stage']))}")
            writer.writerow([row["id"], " ".join(words)])
    (folder / "img").mkdir(exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for row in labs:
        if row["in_trial"] == "1":
            picture = 0.3 * torch.randn(3, 16, 16, generator=generator)
            picture[:, 4:12, 4:12] += float(row["bili"])
            save_file({"x": picture}, folder / "img" / f"{row['id']}.safetensors")
    return folder


def _tokenizer(path: Path) -> None:
    """A word-level BERT-style tokenizer ([CLS] text [SEP]) over the notes' vocabulary, as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = [
        "bilirubin",
        "albumin",
        "prothrombin",
        "high",
        "low",
        "ascites",
        "edema",
        "spiders",
        "present",
        "absent",
        "stage",
        "1",
        "2",
        "3",
        "4",
    ]
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer.save(str(path))


def bert(folder: Path) -> tuple[Path, list[str]]:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=19,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    path = folder / "bert"
    BertModel(config).save_pretrained(path)
    _tokenizer(path / "tokenizer.json")
    return path, ["--modality", "notes"]


def vit(folder: Path) -> tuple[Path, list[str]]:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    path = folder / "vit"
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    return path, ["--modality", "img"]


class VisitTransformer(nn.Module):
    """A TransformerEncoder over lab visits that takes a padding mask."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(13, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.proj(x), src_key_padding_mask=src_key_padding_mask)


def transformer(folder: Path) -> tuple[Path, list[str]]:
    module = VisitTransformer().eval()
    dims = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}
    program = torch.export.export(
        module, (torch.randn(2, 3, 13), torch.zeros(2, 3, dtype=torch.bool)), dynamic_shapes=(dims, dims)
    )
    path = folder / "transformer.pt2"
    torch.export.save(program, path)
    return path, ["--modality", "visits"]


class VisitLSTM(nn.Module):
    """A bidirectional LSTM over lab visits; returns (outputs, (h, c)) as nn.LSTM does."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(13, 16, num_layers=2, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        return self.lstm(x)


def lstm(folder: Path) -> tuple[Path, list[str]]:
    path = folder / "lstm.pt"
    torch.save(VisitLSTM(), path)
    return path, ["--modality", "visits", "--input-shape", "?x13", "--trust-pickle"]


class VisitGRU(nn.Module):
    """A GRU over lab visits with a projection of every step."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(13, 24, batch_first=True)
        self.out = nn.Linear(24, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, _ = self.gru(x)
        return self.out(steps)


def gru(folder: Path) -> tuple[Path, list[str]]:
    path = folder / "gru.pt"
    torch.save(VisitGRU(), path)
    return path, ["--modality", "visits", "--input-shape", "?x13", "--trust-pickle"]


class PictureCNN(nn.Module):
    """A small CNN with batch norm that ends in a 4-D feature map (b, 16, 4, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def cnn(folder: Path) -> tuple[Path, list[str]]:
    module = PictureCNN()
    module(torch.randn(8, 3, 16, 16))  # batch statistics move away from their initial values
    path = folder / "cnn.pt"
    torch.save(module.train(), path)  # saved in train mode, as people do; wrap exports it in eval mode
    return path, ["--modality", "img", "--input-shape", "3x16x16", "--trust-pickle"]


class TableDict(nn.Module):
    """A tabular encoder that returns a dict, as many research codebases do."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(17, 32), nn.GELU(), nn.Linear(32, 24))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return {"embedding": features, "norm": features.norm(dim=-1)}


def table_dict(folder: Path) -> tuple[Path, list[str]]:
    program = torch.export.export(TableDict().eval(), (torch.randn(2, 17),), dynamic_shapes=({0: Dim.DYNAMIC},))
    path = folder / "tabdict.pt2"
    torch.export.save(program, path)
    return path, ["--modality", "tab", "--output-key", "embedding"]


def sklearn_mlp(folder: Path) -> tuple[Path, list[str]]:
    """scikit-learn's MLPClassifier fitted on the labs (event within follow-up), its hidden layers copied into
    nn.Linear layers and saved as TorchScript."""
    from sklearn.neural_network import MLPClassifier

    labs = _rows(folder / "data" / "labs.csv")
    events = {r["id"]: r["event"] for r in _rows(folder / "data" / "labels.csv")}
    x = torch.tensor([[float(v) for k, v in r.items() if k != "id"] for r in labs])
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    fitted = MLPClassifier((32, 16), max_iter=300, random_state=0).fit(x.numpy(), [events[r["id"]] for r in labs])
    layers: list[nn.Module] = []
    for weight, bias in zip(fitted.coefs_[:-1], fitted.intercepts_[:-1]):
        linear = nn.Linear(*weight.shape)
        linear.weight.data = torch.tensor(weight.T, dtype=torch.float32)
        linear.bias.data = torch.tensor(bias, dtype=torch.float32)
        layers += [linear, nn.ReLU()]
    path = folder / "sklearn_mlp.ts"
    torch.jit.save(torch.jit.script(nn.Sequential(*layers)), str(path))
    return path, ["--modality", "tab", "--input-shape", "17", "--trust-pickle"]


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    make: Callable[[Path], tuple[Path, list[str]]]
    train_flags: tuple[str, ...] = ()


FAMILIES = (
    Family("bert", "transformers BertModel, local folder + tokenizer.json (text)", bert),
    Family("vit", "transformers ViTModel, local folder (3x16x16 images)", vit),
    Family("transformer", "nn.TransformerEncoder with padding mask, torch.export .pt2", transformer),
    Family("lstm", "bidirectional 2-layer nn.LSTM, pickled module (--trust-pickle)", lstm),
    Family("gru", "nn.GRU + Linear, pickled module (--trust-pickle)", gru),
    Family("cnn", "CNN with batch norm, 4-D feature map, pickled in train mode", cnn),
    Family("dict", "module returning a dict, torch.export .pt2 (--output-key)", table_dict),
    Family(
        "sklearn", "scikit-learn MLPClassifier weights, TorchScript (--trust-pickle)", sklearn_mlp, ("--standardize",)
    ),
)

RELOAD = """
import sys
sys.modules["transformers"] = None  # the block must load without the library that defined its encoder
import torch, legokit
from safetensors.torch import load_file
block = legokit.load_block(sys.argv[1])
saved = load_file(sys.argv[2])
args = (saved["x"], saved["mask"]) if "mask" in saved else (saved["x"],)
with torch.no_grad():
    print("identical" if torch.equal(block(*args), saved["out"]) else "different")
"""


def reference_output(block_path: Path, out: Path) -> Path:
    """Run a block in this process on a fixed input; save input and output for the fresh-process comparison."""
    import legokit
    from legokit.encoders.foreign import padding_mask, random_input

    block = legokit.load_block(block_path)
    config = block.config
    generator = torch.Generator().manual_seed(1)
    x = random_input(config.input_shape, 5, 7, config.input_dtype, generator)
    tensors = {"x": x}
    if None in config.input_shape:
        tensors["mask"] = padding_mask(5, 7)
    with torch.no_grad():
        tensors["out"] = block(*tensors.values())
    save_file(tensors, out)
    return out


def reloads_identically(block_path: Path, work: Path) -> bool:
    saved = reference_output(block_path, work / f"{block_path.stem}.reference.safetensors")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RELOAD), str(block_path), str(saved)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout.strip().endswith("identical") and "different" not in done.stdout


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from legokit.cli.commands import main as cli

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the table as JSON")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_family_data(work / "data")
        for family in FAMILIES:
            source, flags = family.make(work)
            target = work / f"{family.name}.st"
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                status = cli(["wrap", str(source), *flags, *LATENT, "-o", str(target)])
            seconds = time.perf_counter() - started
            if status:
                rows.append({"family": family.name, "description": family.description, "wrapped": False})
                continue
            rows.append(
                {
                    "family": family.name,
                    "description": family.description,
                    "wrapped": True,
                    "wrap_seconds": round(seconds, 2),
                    "size_bytes": target.stat().st_size,
                    "bit_identical_after_reload": reloads_identically(target, work),
                }
            )
    print("| family | encoder | wrap | file size | bit-identical after reload |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        if row["wrapped"]:
            print(
                f"| {row['family']} | {row['description']} | {row['wrap_seconds']:.1f} s | "
                f"{row['size_bytes'] / 1024:,.0f} KiB | {'yes' if row['bit_identical_after_reload'] else 'no'} |"
            )
        else:
            print(f"| {row['family']} | {row['description']} | failed | — | — |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
