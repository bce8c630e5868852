"""Faults of the in-memory networks that stand in for gRPC in fast tests (memberlist's
MockNetwork): node.discovery.memory for membership, node.transfer.memory for transfer streams.

Addresses are plain strings. `crash(address)` makes it refuse connections at once; `pause`
makes it stop answering (a stopped process) until `resume`; `cut(a, b)` drops traffic between
two addresses both ways until `heal`.
"""

from __future__ import annotations


class FaultModel:
    """Which addresses are crashed or paused, and which links are cut."""

    def __init__(self) -> None:
        self.crashed: set[str] = set()
        self.paused: set[str] = set()
        self.cuts: set[frozenset[str]] = set()

    def crash(self, address: str) -> None:
        """Calls to `address` fail at once."""
        self.crashed.add(address)

    def pause(self, address: str) -> None:
        """`address` stops answering."""
        self.paused.add(address)

    def resume(self, address: str) -> None:
        """Undo `pause`."""
        self.paused.discard(address)

    def cut(self, a: str, b: str) -> None:
        """Drop traffic between `a` and `b`."""
        self.cuts.add(frozenset((a, b)))

    def heal(self) -> None:
        """Undo every `cut`."""
        self.cuts.clear()

    def refused(self, source: str, address: str) -> bool:
        """True if a connection from `source` to `address` is refused (either side crashed)."""
        return address in self.crashed or source in self.crashed

    def silent(self, source: str, address: str) -> bool:
        """True if traffic between the two goes unanswered (paused, or the link is cut)."""
        return address in self.paused or source in self.paused or frozenset((source, address)) in self.cuts
