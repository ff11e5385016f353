"""Recurrent layers that torch.export can keep dynamic over the sequence length.

`nn.LSTM`, `nn.GRU` and `nn.RNN` are decomposed by torch.export into one step per time step, which fixes the
sequence length of the exported program (pytorch/pytorch#115092). The layers here compute the same recurrences
with torch's `scan` operator, on the very same parameters, so a user's encoder exports once for every length.
`exportable_copy` swaps them into a copy of a module; the user's module is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import cast

import torch
from einops import rearrange
from torch import nn

from legokit.errors import EncoderError
from legokit.torch_internals import scan_operator

Cell = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _gru_cell(h: torch.Tensor, gates_in: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """One GRU step, as nn.GRU computes it (reset gate applied to the hidden projection)."""
    gates_h = h @ w_hh.T + b_hh
    in_r, in_z, in_n = gates_in.chunk(3, dim=-1)
    h_r, h_z, h_n = gates_h.chunk(3, dim=-1)
    reset, update = torch.sigmoid(in_r + h_r), torch.sigmoid(in_z + h_z)
    new = torch.tanh(in_n + reset * h_n)
    return (1 - update) * new + update * h


class ScanRecurrent(nn.Module):
    """nn.LSTM / nn.GRU / nn.RNN (any layers, directions, batch_first) evaluated with `scan`; same parameters,
    same outputs, same return structure, so the surrounding user code runs unchanged."""

    def __init__(self, layer: nn.RNNBase):
        super().__init__()
        if getattr(layer, "proj_size", 0):
            raise EncoderError("an LSTM with proj_size cannot be exported with a dynamic length; export it yourself")
        self.layer = layer
        self.mode = layer.mode  # "LSTM", "GRU", "RNN_TANH" or "RNN_RELU"

    def _direction(
        self, x: torch.Tensor, layer: int, suffix: str, h0: torch.Tensor, c0: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One direction of one layer over time-major x (n, b, f): outputs (n, b, h), last h (and c)."""
        scan = scan_operator()  # loads torch's compiler stack: only when a recurrence exports

        def get(name: str) -> torch.Tensor:  # nn.RNNBase registers every layer's weights (and biases when it has them)
            return getattr(self.layer, f"{name}_l{layer}{suffix}")

        w_ih, w_hh = get("weight_ih"), get("weight_hh")
        b_ih = get("bias_ih") if self.layer.bias else torch.zeros(w_ih.shape[0], dtype=x.dtype, device=x.device)
        b_hh = get("bias_hh") if self.layer.bias else torch.zeros(w_hh.shape[0], dtype=x.dtype, device=x.device)
        gates_in = x @ w_ih.T + b_ih
        if self.mode == "LSTM":

            def step(carry: tuple[torch.Tensor, torch.Tensor], g: torch.Tensor):
                h, c = carry
                i, f, cell, o = (g + h @ w_hh.T + b_hh).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cell)
                h = torch.sigmoid(o) * torch.tanh(c)
                return (h, c), h.clone()

            (h, c), out = scan(step, (h0, c0), gates_in)
            return out, h, c
        if self.mode == "GRU":

            def step_gru(h: torch.Tensor, g: torch.Tensor):
                h = _gru_cell(h, g, w_hh, b_hh)
                return h, h.clone()

            h, out = scan(step_gru, h0, gates_in)
            return out, h, None
        act = torch.tanh if self.mode == "RNN_TANH" else torch.relu

        def step_rnn(h: torch.Tensor, g: torch.Tensor):
            h = act(g + h @ w_hh.T + b_hh)
            return h, h.clone()

        h, out = scan(step_rnn, h0, gates_in)
        return out, h, None

    def forward(self, x: torch.Tensor, hx: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None):
        layer = self.layer
        if x.dim() != 3:
            raise EncoderError(f"recurrent layer: expected a batched 3-D input, got shape {tuple(x.shape)}")
        seq = rearrange(x, "b n f -> n b f") if layer.batch_first else x
        directions = 2 if layer.bidirectional else 1
        states = directions * layer.num_layers
        zeros = seq.new_zeros(states, seq.shape[1], layer.hidden_size)
        if hx is None:
            h0, c0 = zeros, (zeros if self.mode == "LSTM" else None)
        elif self.mode == "LSTM":
            h0, c0 = hx
        else:
            h0, c0 = cast(torch.Tensor, hx), None  # hx is one tensor for a GRU or RNN (nn.RNNBase's interface)
        last_h, last_c = [], []
        for index in range(layer.num_layers):
            outputs = []
            for direction in range(directions):
                state = index * directions + direction
                inp = seq.flip(0) if direction else seq
                out, h, c = self._direction(
                    inp, index, "_reverse" if direction else "", h0[state], None if c0 is None else c0[state]
                )
                outputs.append(out.flip(0) if direction else out)
                last_h.append(h)
                last_c.append(c)
            seq = torch.cat(outputs, dim=-1) if directions > 1 else outputs[0]
            if index < layer.num_layers - 1 and layer.dropout and self.training:
                seq = nn.functional.dropout(seq, layer.dropout, True)
        output = rearrange(seq, "n b h -> b n h") if layer.batch_first else seq
        h_n = torch.stack(last_h)
        if self.mode == "LSTM":
            return output, (h_n, torch.stack(cast("list[torch.Tensor]", last_c)))  # an LSTM gives every c
        return output, h_n


def exportable_copy(module: nn.Module) -> tuple[nn.Module, int]:
    """A deep copy of `module` whose recurrent layers are `ScanRecurrent`; returns it and how many were swapped."""
    module = copy.deepcopy(module)
    swapped = 0
    if isinstance(module, nn.RNNBase):
        return ScanRecurrent(module), 1
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.RNNBase):
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, ScanRecurrent(child))
            swapped += 1
    return module, swapped
