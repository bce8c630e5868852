"""Client commands (placeholder until written)."""
from typing import Any


def add_parsers(sub: Any) -> None:
    """Register client subcommands."""
