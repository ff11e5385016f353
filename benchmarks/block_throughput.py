"""Benchmark: LegoBlock forward and forward+backward throughput against a plain implementation of the same block
written the obvious way (the encoder called at every update step, hand-written softmax attention, float32 only),
and against a reference-style block at the public MM-Lego code's configuration (`ReferenceStyleBlock`).

Grid: latent 64x64 and 256x256, depth 2 and 8, batch 64 and 512; CPU, and CUDA when present (bf16 autocast there
for legokit). Encoders, the same weights in both implementations: `tab`, an SNN on 76 features (hidden 256, one
token), and `bag`, a token-wise MLP over bags of 128 tokens of 256 features (hidden 256, 128 tokens), like patch or
visit embeddings. Memory: on CUDA the allocator's peak; on CPU the bytes autograd saves for the backward pass.

    python -m benchmarks.block_throughput [--quick] [--json block.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from legokit.encoders import SNN
from legokit.nn.block import BlockConfig, EncoderSpec, LegoBlock
from legokit.tasks import TaskSpec

ENCODERS = {"tab": ("snn", (76,)), "bag": ("mlp", (128, 256))}


class PlainBlock(nn.Module):
    """The same block, the obvious way: encoder per step, softmax(q k^T / sqrt(d)) v by hand, float32."""

    def __init__(self, block: LegoBlock):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        x = (x - block.input_shift) / block.input_scale
        latent = block.latent.unsqueeze(0).expand(x.shape[0], -1, -1)
        spectrum = None
        for index, layer in enumerate(block.layers):
            tokens = block.encoder(x)  # the encoder again at every step
            tokens = tokens.unsqueeze(1) if tokens.dim() == 2 else tokens
            spectrum = torch.fft.fftn(latent, dim=(-2, -1))
            real, imag = spectrum.real, spectrum.imag
            attention = layer.attention
            q = attention.to_q(attention.norm_query(real))
            k, v = attention.to_kv(attention.norm_context(tokens)).chunk(2, dim=-1)
            weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            real = real + attention.to_out(weights @ v)
            real = real + layer.feed_forward(real)
            spectrum = torch.complex(real, imag)
            if index < len(block.layers) - 1:
                latent = torch.fft.ifftn(spectrum, dim=(-2, -1)).real
        return block.decode(spectrum)


class ReferenceStyleBlock(nn.Module):
    """A plain re-implementation, written here from the MM-Lego paper and its public code's published configuration
    (not vendored): 8 heads x 64, the encoder (an SNN with a trailing Linear) called at every step, the latent scaled
    to unit norm along its channels before each step, 1-D FFTs over the channels (computed once for Re, once for Im,
    once for the tokens), einsum attention with an explicit softmax, a SELU feed-forward, a head on Re channel means."""

    def __init__(
        self,
        encoder: nn.Module,
        latent: int,
        depth: int,
        context: int,
        heads: int = 8,
        dim_head: int = 64,
        out_features: int = 4,
    ):
        super().__init__()
        self.encoder, self.heads, self.scale = encoder, heads, dim_head**-0.5
        self.latent = nn.Parameter(torch.randn(latent, latent))
        inner = heads * dim_head
        self.steps = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm_q": nn.LayerNorm(latent),
                    "norm_context": nn.LayerNorm(context),
                    "to_q": nn.Linear(latent, inner, bias=False),
                    "to_kv": nn.Linear(context, 2 * inner, bias=False),
                    "to_out": nn.Linear(inner, latent),
                    "norm_ff": nn.LayerNorm(latent),
                    "ff": nn.Sequential(nn.Linear(latent, 4 * latent), nn.SELU(), nn.Linear(4 * latent, latent)),
                }
            )
            for _ in range(depth)
        )
        self.head = nn.Sequential(nn.LayerNorm(latent), nn.Linear(latent, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latent = self.latent.unsqueeze(0).expand(x.shape[0], -1, -1)
        for index, step in enumerate(self.steps):
            tokens = self.encoder(x).unsqueeze(1)
            latent = latent / latent.norm(dim=1, keepdim=True)
            real = torch.fft.fft(latent, dim=1).real
            imag = torch.fft.fft(latent, dim=1).imag
            tokens = torch.fft.fft(tokens, dim=1).real
            q = step["to_q"](step["norm_q"](real))
            k, v = step["to_kv"](step["norm_context"](tokens)).chunk(2, dim=-1)
            q, k, v = (t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
            weights = torch.einsum("bhid,bhjd->bhij", q, k).mul(self.scale).softmax(dim=-1)
            out = torch.einsum("bhij,bhjd->bhid", weights, v).transpose(1, 2).reshape(x.shape[0], real.shape[1], -1)
            real = real + step["to_out"](out)
            real = real + step["ff"](step["norm_ff"](real))
            if index < len(self.steps) - 1:
                latent = torch.fft.ifft(torch.complex(real, imag), dim=1).real
        return self.head(real.mean(dim=1))


def reference_pair(latent: int = 64, depth: int = 2) -> tuple[LegoBlock, ReferenceStyleBlock]:
    """legokit's block and the reference-style block at the public code's configuration, one encoder module (an
    SNN on 76 features with a trailing Linear, one token), identical in both."""
    torch.manual_seed(0)
    encoder = nn.Sequential(SNN(76, hidden=256, depth=2, dropout=0.0), nn.Linear(256, 256))
    spec = EncoderSpec("snn", {"in_features": 76, "hidden": 256, "dropout": 0.0}, 256)
    config = BlockConfig("tab", spec, (76,), TaskSpec("survival", 4), (latent, latent), depth, heads=8, dim_head=64)
    return LegoBlock(config, encoder=encoder), ReferenceStyleBlock(encoder, latent, depth, 256)


def make_block(latent: int, depth: int, encoder: str = "tab") -> LegoBlock:
    torch.manual_seed(0)
    name, shape = ENCODERS[encoder]
    spec = EncoderSpec(name, {"in_features": shape[-1], "hidden": 256, "dropout": 0.0}, 256)
    config = BlockConfig(encoder, spec, shape, TaskSpec("survival", 4), (latent, latent), depth)
    return LegoBlock(config)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    model: nn.Module,
    shape: tuple[int, ...],
    batch: int,
    device: torch.device,
    backward: bool,
    autocast: bool,
    repeats: int,
) -> tuple[float, int]:
    """(samples per second, memory bytes) of forward (or forward+backward) passes."""
    x = torch.randn(batch, *shape, device=device)
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        if backward:
            out.float().sum().backward()

    model.train(backward)
    with torch.set_grad_enabled(backward):
        step()  # warm-up
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        _sync(device)
        seconds = (time.perf_counter() - start) / repeats
        if device.type == "cuda":
            memory = torch.cuda.max_memory_allocated(device)
        else:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                step()
            memory = saved
    model.zero_grad(set_to_none=True)
    return batch / seconds, memory


def interleaved(first, second, rounds: int) -> tuple[tuple[float, int], tuple[float, int]]:
    """The best throughput of each of two measurements, taken alternately `rounds` times, so that a burst of other
    work on a shared machine hits both alike and the ratio stays honest."""
    results: tuple[list, list] = ([], [])
    for _ in range(rounds):
        results[0].append(first())
        results[1].append(second())
    return max(results[0]), max(results[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only latent 64x64 on CPU")
    parser.add_argument("--repeats", type=int, default=3, help="passes per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements of each side; the best counts")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    latents = (64,) if args.quick else (64, 256)
    rows = []
    for device in devices:
        for encoder, (_, shape) in ENCODERS.items():
            for latent in latents:
                for depth in (2, 8):
                    for batch in (64, 512):
                        heavy = (
                            latent == 256
                            and (batch == 512 or depth == 8)
                            or (encoder == "bag" and batch == 512 and depth == 8)
                        )
                        if device.type == "cpu" and heavy:
                            continue  # minutes per pass on two cores; run it on a GPU
                        block = make_block(latent, depth, encoder).to(device)
                        plain = PlainBlock(block)
                        result = {
                            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                            "encoder": encoder,
                            "latent": latent,
                            "depth": depth,
                            "batch": batch,
                        }
                        for backward in (False, True):
                            name = "fwd_bwd" if backward else "fwd"
                            (ours, ours_mem), (base, base_mem) = interleaved(
                                lambda: measure(
                                    block, shape, batch, device, backward, device.type == "cuda", args.repeats
                                ),
                                lambda: measure(plain, shape, batch, device, backward, False, args.repeats),
                                args.rounds,
                            )
                            result.update(
                                {
                                    f"{name}_legokit": ours,
                                    f"{name}_plain": base,
                                    f"{name}_ratio": ours / base,
                                    f"{name}_memory_legokit": ours_mem,
                                    f"{name}_memory_plain": base_mem,
                                }
                            )
                        rows.append(result)
    table = Table(title="LegoBlock vs a plain implementation (samples/s; memory: CUDA peak, or CPU saved activations)")
    for column in (
        "device",
        "encoder",
        "latent",
        "depth",
        "batch",
        "fwd",
        "plain fwd",
        "ratio",
        "fwd+bwd",
        "plain fwd+bwd",
        "ratio",
        "mem fwd+bwd",
        "plain mem",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["device"],
            r["encoder"],
            f"{r['latent']}x{r['latent']}",
            str(r["depth"]),
            str(r["batch"]),
            f"{r['fwd_legokit']:,.0f}",
            f"{r['fwd_plain']:,.0f}",
            f"{r['fwd_ratio']:.2f}x",
            f"{r['fwd_bwd_legokit']:,.0f}",
            f"{r['fwd_bwd_plain']:,.0f}",
            f"{r['fwd_bwd_ratio']:.2f}x",
            f"{r['fwd_bwd_memory_legokit'] / 1e6:,.0f} MB",
            f"{r['fwd_bwd_memory_plain'] / 1e6:,.0f} MB",
        )
    Console(width=170).print(table)
    reference = []
    for device in devices:
        for batch in (64, 512):
            ours, theirs = (m.to(device) for m in reference_pair())
            result = {"device": str(device), "latent": 64, "depth": 2, "batch": batch}
            for backward in (False, True):
                name = "fwd_bwd" if backward else "fwd"
                (a, _), (b, _) = interleaved(
                    lambda: measure(ours, (76,), batch, device, backward, device.type == "cuda", args.repeats),
                    lambda: measure(theirs, (76,), batch, device, backward, False, args.repeats),
                    args.rounds,
                )
                result.update({f"{name}_legokit": a, f"{name}_reference": b, f"{name}_ratio": a / b})
            reference.append(result)
    table = Table(
        title="LegoBlock vs a reference-style block at the public code's configuration (64x64, depth 2, "
        "8 heads x 64, SNN + Linear encoder; samples/s)"
    )
    for column in ("device", "batch", "fwd", "reference fwd", "ratio", "fwd+bwd", "reference fwd+bwd", "ratio"):
        table.add_column(column, justify="right")
    for r in reference:
        table.add_row(
            r["device"],
            str(r["batch"]),
            f"{r['fwd_legokit']:,.0f}",
            f"{r['fwd_reference']:,.0f}",
            f"{r['fwd_ratio']:.2f}x",
            f"{r['fwd_bwd_legokit']:,.0f}",
            f"{r['fwd_bwd_reference']:,.0f}",
            f"{r['fwd_bwd_ratio']:.2f}x",
        )
    Console(width=170).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"plain": rows, "reference": reference}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
