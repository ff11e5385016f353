"""The composition graph: validated before anything runs, executed in topological order, stored as JSON."""

from __future__ import annotations

import pytest
import torch

import legokit
from legokit import ConfigError, Graph
from legokit.artifacts.files import save_block
from legokit.artifacts.merging import merge_files
from legokit.compose.graph import BlockFacts
from legokit.wrap import wrap_builtin

from .conftest import SMALL, VisitEncoder, run_python

FACTS = {m: BlockFacts(m, (8, 16), "binary") for m in ("a", "b")}


def test_a_merge_graph_validates_and_runs_inputs_before_blocks_before_the_merge():
    graph = Graph.for_operation("merge", ["b", "a"], phase="paper")
    graph.validate(FACTS)
    order = graph.order()
    assert order.index("input:a") < order.index("block:a") < order.index("merge") < order.index("head")
    assert Graph.from_json(graph.to_json()).order() == order


def test_a_cycle_is_refused():
    graph = Graph.for_operation("merge", ["a", "b"])
    graph.nx.add_edge("head", "block:a")
    with pytest.raises(ConfigError, match="cycle"):
        graph.validate(FACTS)


def test_a_block_that_does_not_reach_the_head_is_refused():
    graph = Graph.for_operation("merge", ["a", "b"])
    graph.nx.remove_edge("block:b", "merge")
    with pytest.raises(ConfigError, match="does not reach the head|joins 1 block"):
        graph.validate(FACTS)


def test_two_input_nodes_for_one_modality_are_refused():
    graph = Graph.for_operation("merge", ["a", "b"])
    graph.add("input:a2", "input", modality="a")
    with pytest.raises(ConfigError, match="modality 'a' has two input nodes"):
        graph.validate(FACTS)


def test_unknown_node_types_and_missing_blocks_are_refused():
    graph = Graph()
    with pytest.raises(ConfigError, match="unknown node type"):
        graph.add("x", "blend")
    with pytest.raises(ConfigError, match="no block artifact for modality 'c'"):
        Graph.for_operation("merge", ["a", "c"]).validate(FACTS)


def test_mismatched_latents_are_refused_by_the_graph():
    facts = {"a": FACTS["a"], "b": BlockFacts("b", (4, 16), "binary")}
    with pytest.raises(ConfigError, match="latent shapes disagree"):
        Graph.for_operation("merge", ["a", "b"]).validate(facts)


def test_merged_model_with_a_foreign_block_loads_bit_identical_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    visits = legokit.wrap_module(VisitEncoder(), "visits", "survival:4", (None, 6), **SMALL)
    tab = wrap_builtin("snn", None, "tab", "survival:4", {"in_features": 10, "hidden": 16}, **SMALL)
    paths = [save_block(visits, tmp_path / "visits.st"), save_block(tab, tmp_path / "tab.st")]
    model_path = merge_files(paths, tmp_path / "model.st")
    torch.manual_seed(5)
    x_tab, x_visits = torch.randn(3, 10), torch.randn(3, 4, 6)
    from safetensors.torch import load_file, save_file

    save_file({"tab": x_tab, "visits": x_visits}, tmp_path / "in.safetensors")
    code = """
        import sys, torch, legokit
        from safetensors.torch import load_file, save_file
        model = legokit.load(sys.argv[1])
        inputs = {name: t.clone() for name, t in load_file(sys.argv[2]).items()}  # aligned, as in the parent
        with torch.no_grad():
            save_file({"out": model(inputs).contiguous()}, sys.argv[3])
        assert "tests" not in sys.modules
    """
    result = run_python(code, str(model_path), str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors"))
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = legokit.load(model_path)({"tab": x_tab, "visits": x_visits})
    assert torch.equal(load_file(tmp_path / "out.safetensors")["out"], expected)
