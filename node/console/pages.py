"""The console's pages (server-rendered HTML, small vanilla JS)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from node.console.console import Console


def add_pages(app: web.Application, console: Console) -> None:
    """Add every page's route."""
