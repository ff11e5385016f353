"""Benchmark: LegoBlock forward and forward+backward throughput against a plain implementation of the same block
written the obvious way (the encoder called at every update step, hand-written softmax attention, float32 only).

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

from legokit.block import BlockConfig, EncoderSpec, LegoBlock
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
        return block.head(spectrum)


def make_block(latent: int, depth: int, encoder: str = "tab") -> LegoBlock:
    torch.manual_seed(0)
    name, shape = ENCODERS[encoder]
    spec = EncoderSpec(name, {"in_features": shape[-1], "hidden": 256, "dropout": 0.0}, 256)
    config = BlockConfig(encoder, spec, shape, TaskSpec("survival", 4), (latent, latent), depth)
    return LegoBlock(config)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: nn.Module, shape: tuple[int, ...], batch: int, device: torch.device, backward: bool, autocast: bool,
            repeats: int) -> tuple[float, int]:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only latent 64x64 on CPU")
    parser.add_argument("--repeats", type=int, default=3)
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
                        heavy = latent == 256 and (batch == 512 or depth == 8) or (encoder == "bag" and batch == 512 and depth == 8)
                        if device.type == "cpu" and heavy:
                            continue  # minutes per pass on two cores; run it on a GPU
                        block = make_block(latent, depth, encoder).to(device)
                        plain = PlainBlock(block)
                        result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                                  "encoder": encoder, "latent": latent, "depth": depth, "batch": batch}
                        for backward in (False, True):
                            name = "fwd_bwd" if backward else "fwd"
                            ours, ours_mem = measure(block, shape, batch, device, backward, device.type == "cuda", args.repeats)
                            base, base_mem = measure(plain, shape, batch, device, backward, False, args.repeats)
                            result.update({f"{name}_legokit": ours, f"{name}_plain": base, f"{name}_ratio": ours / base,
                                           f"{name}_memory_legokit": ours_mem, f"{name}_memory_plain": base_mem})
                        rows.append(result)
    table = Table(title="LegoBlock vs a plain implementation (samples/s; memory: CUDA peak, or CPU saved activations)")
    for column in ("device", "encoder", "latent", "depth", "batch", "fwd", "plain fwd", "ratio", "fwd+bwd", "plain fwd+bwd", "ratio",
                   "mem fwd+bwd", "plain mem"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["device"], r["encoder"], f"{r['latent']}x{r['latent']}", str(r["depth"]), str(r["batch"]),
                      f"{r['fwd_legokit']:,.0f}", f"{r['fwd_plain']:,.0f}", f"{r['fwd_ratio']:.2f}x",
                      f"{r['fwd_bwd_legokit']:,.0f}", f"{r['fwd_bwd_plain']:,.0f}", f"{r['fwd_bwd_ratio']:.2f}x",
                      f"{r['fwd_bwd_memory_legokit'] / 1e6:,.0f} MB", f"{r['fwd_bwd_memory_plain'] / 1e6:,.0f} MB")
    Console(width=170).print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
