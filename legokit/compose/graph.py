"""The composition graph: a networkx DiGraph of typed nodes (input, block, merge, a fusion mode such as stack or
weave, adapter, head), validated before anything runs and executed in topological order. Stored in artifacts as
node-link JSON."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx

from legokit.compose.modes import fusion_modes
from legokit.errors import ConfigError


def operations() -> tuple[str, ...]:
    """The operations that join blocks: merge, and each registered fusion mode (`compose.modes`)."""
    return ("merge", *fusion_modes())


def node_types() -> tuple[str, ...]:
    """Every type a node may have: inputs, blocks, the operations, adapters and the head."""
    return ("input", "block", *operations(), "adapter", "head")


@dataclass(frozen=True)
class BlockFacts:
    """What validation needs to know of a block: the shape of its latent and its task."""

    modality: str
    latent: tuple[int, int]
    task: str


class Graph:
    """A typed DAG of how a model is composed. Node names are `input:M`, `block:M`, or an operation's name."""

    def __init__(self, graph: nx.DiGraph | None = None):
        self.nx = graph if graph is not None else nx.DiGraph()

    @classmethod
    def for_operation(cls, operation: str, modalities: Iterable[str], **params: Any) -> Graph:
        """input:M -> block:M for each modality, all into one operation node, then the head."""
        if operation not in operations():
            raise ConfigError(f"unknown operation {operation!r}; choose one of {', '.join(operations())}")
        graph = cls()
        graph.add(operation, operation, **params)
        graph.add("head", "head")
        graph.nx.add_edge(operation, "head")
        for modality in modalities:
            graph.add(f"input:{modality}", "input", modality=modality)
            graph.add(f"block:{modality}", "block", modality=modality)
            graph.nx.add_edge(f"input:{modality}", f"block:{modality}")
            graph.nx.add_edge(f"block:{modality}", operation)
        return graph

    def add(self, name: str, type: str, **attrs: Any) -> None:
        if type not in node_types():
            raise ConfigError(f"node {name!r}: unknown node type {type!r}; choose one of {', '.join(node_types())}")
        self.nx.add_node(name, type=type, **attrs)

    def type(self, node: str) -> str:
        return self.nx.nodes[node]["type"]

    def attrs(self, node: str) -> dict[str, Any]:
        return dict(self.nx.nodes[node])

    def nodes_of(self, type: str) -> list[str]:
        return sorted(n for n, data in self.nx.nodes(data=True) if data.get("type") == type)

    def modalities(self) -> list[str]:
        return sorted(self.nx.nodes[n]["modality"] for n in self.nodes_of("block"))

    def head(self) -> str:
        heads = self.nodes_of("head")
        if len(heads) != 1:
            raise ConfigError(f"the graph needs exactly one head node, it has {len(heads)}")
        return heads[0]

    def validate(self, blocks: Mapping[str, BlockFacts]) -> None:
        """Raise a ConfigError naming the first problem: cycles, wiring, unknown or mismatched blocks."""
        g = self.nx
        if not nx.is_directed_acyclic_graph(g):
            cycle = " -> ".join(str(edge[0]) for edge in nx.find_cycle(g))
            raise ConfigError(f"the graph has a cycle: {cycle}")
        for node, data in g.nodes(data=True):
            if data.get("type") not in node_types():
                raise ConfigError(f"node {node!r}: unknown node type {data.get('type')!r}")
        head = self.head()
        seen: dict[str, str] = {}
        for node in self.nodes_of("input"):
            modality = g.nodes[node].get("modality")
            if modality in seen:
                raise ConfigError(f"modality {modality!r} has two input nodes: {seen[modality]} and {node}")
            seen[modality] = node
        for node in self.nodes_of("block"):
            modality = g.nodes[node].get("modality")
            feeds = [p for p in g.predecessors(node) if self.type(p) == "input"]
            if len(feeds) != 1 or g.nodes[feeds[0]].get("modality") != modality:
                raise ConfigError(f"block {node!r} needs exactly one input node of modality {modality!r}")
            if modality not in blocks:
                raise ConfigError(f"block {node!r}: no block artifact for modality {modality!r}")
            if not nx.has_path(g, node, head):
                raise ConfigError(f"block {node!r} does not reach the head")
        for node in [n for operation in operations() for n in self.nodes_of(operation)]:
            if g.in_degree(node) < 2:
                raise ConfigError(
                    f"{self.type(node)} node {node!r} joins {g.in_degree(node)} block(s); it needs at least 2"
                )
        used = [blocks[m] for m in self.modalities()]
        for facts in used[1:]:
            if facts.latent != used[0].latent:
                raise ConfigError(
                    f"latent shapes disagree: {used[0].modality} has {used[0].latent[0]}x{used[0].latent[1]}, "
                    f"{facts.modality} has {facts.latent[0]}x{facts.latent[1]} (wrap or train them with one --latent)"
                )
            if facts.task != used[0].task:
                raise ConfigError(
                    f"tasks disagree: {used[0].modality} is {used[0].task}, {facts.modality} is {facts.task}"
                )

    def order(self) -> list[str]:
        """Nodes in a topological order that is the same on every run (ties broken by name)."""
        return list(nx.lexicographical_topological_sort(self.nx))

    def execute(self, run: Mapping[str, Callable[[str, dict[str, Any]], Any]]) -> Any:
        """Evaluate every node in order as `run[type](node, {predecessor: its value})`; returns the head's value."""
        values: dict[str, Any] = {}
        for node in self.order():
            inputs = {p: values[p] for p in sorted(self.nx.predecessors(node))}
            values[node] = run[self.type(node)](node, inputs)
        return values[self.head()]

    def to_json(self) -> dict[str, Any]:
        return nx.node_link_data(self.nx, edges="edges")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Graph:
        try:
            return cls(nx.node_link_graph(dict(data), directed=True, edges="edges"))
        except (KeyError, TypeError, ValueError, nx.NetworkXError) as exc:
            raise ConfigError(f"the stored composition graph is malformed ({type(exc).__name__}: {exc})") from exc

    def tree(self) -> tuple[str, list[Any]]:
        """The graph as a nested (label, children) tree read from the head back to the inputs, for display."""

        def label(node: str) -> str:
            data = self.attrs(node)
            extra = ", ".join(f"{k}={v}" for k, v in sorted(data.items()) if k not in ("type", "modality"))
            return node + (f" ({extra})" if extra else "")

        def walk(node: str) -> tuple[str, list[Any]]:
            return label(node), [walk(p) for p in sorted(self.nx.predecessors(node))]

        return walk(self.head())
