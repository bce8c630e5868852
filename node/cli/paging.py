"""Paging for listing commands: `--limit N`, `--page-token T`, `--all`, one helper for every list RPC.

A listing fetches pages until it has `--limit` items (asking each page for no more than it still
needs, so the node's next page token continues exactly after the last item shown), or every
page with `--all`. Its JSON output is the RPC's response shape: the items under their field name,
`next_page_token` (empty at the end) and the total when the RPC reports one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from google.protobuf.message import Message

from node.cli.render import to_json
from node.client import JobmeshClient
from node.errors import InvalidArgument

MAX_PAGE_SIZE = 1000
# Request fields that give the page size, and response fields that give the total, by the names
# the list RPCs use (FindJobs predates `page_size` / `total_size`).
_PAGE_SIZE_FIELDS = ("page_size", "limit")
_TOTAL_FIELDS = ("total_size", "total_count")


def add_paging_options(parser: argparse.ArgumentParser, default_limit: int = 100) -> None:
    """--limit, --page-token, --all."""
    group = parser.add_argument_group("paging")
    group.add_argument(
        "--limit",
        type=int,
        default=default_limit,
        metavar="N",
        help=f"at most N items (default {default_limit}; 0 = all)",
    )
    group.add_argument(
        "--page-token", default="", metavar="TOKEN", help="continue after a listing (its next_page_token)"
    )
    group.add_argument("--all", action="store_true", help="every item, fetching page after page")


@dataclass
class Listing:
    """The items fetched, the token that continues after them, and the total if the RPC reports it."""

    field: str
    items: list[Any]
    next_page_token: str
    total: tuple[str, int] | None
    cut: bool = False
    """True when a listing that comes in one page had more items than --limit."""

    def to_json(self) -> dict[str, Any]:
        """The listing in the JSON convention (the shape of the RPC's response)."""
        data: dict[str, Any] = {self.field: [to_json(item) for item in self.items]}
        data["next_page_token"] = self.next_page_token
        if self.total is not None:
            data[self.total[0]] = self.total[1]
        return data


def fetch(
    client: JobmeshClient,
    method: Callable[..., Any],
    request: Message,
    field: str,
    args: argparse.Namespace,
) -> Listing:
    """The items of `field` of as many pages of `method` as --limit, --page-token and --all ask for."""
    if args.limit < 0:
        raise InvalidArgument(f"--limit {args.limit}: use 0 (all) or more")
    limit = 0 if args.all else args.limit
    fields = request.DESCRIPTOR.fields_by_name
    size_field = next((name for name in _PAGE_SIZE_FIELDS if name in fields), None)
    pages = "page_token" in fields
    if args.page_token:
        if not pages:
            raise InvalidArgument("--page-token: this listing comes in one page")
        setattr(request, "page_token", args.page_token)  # noqa: B010  # checked above, per message
    items: list[Any] = []
    while True:
        if size_field is not None:
            wanted = limit - len(items) if limit else MAX_PAGE_SIZE
            setattr(request, size_field, min(wanted, MAX_PAGE_SIZE))
        response = client.call(method, request)
        items.extend(getattr(response, field))
        token = str(getattr(response, "next_page_token", ""))
        if not token or (limit and len(items) >= limit):
            break
        setattr(request, "page_token", token)  # noqa: B010
    total_field = next((name for name in _TOTAL_FIELDS if name in response.DESCRIPTOR.fields_by_name), None)
    total = None if total_field is None else (total_field, int(getattr(response, total_field)))
    cut = bool(limit) and len(items) > limit
    if cut:  # a listing that comes in one page: cut here, no token to continue
        total = total or ("total", len(items))
        items = items[:limit]
    return Listing(field, items, token, total, cut)


def print_listing(listing: Listing, print_items: Callable[[list[Any], TextIO], None]) -> None:
    """The items for people (stdout), then how to see more if the listing was cut (stderr)."""
    print_items(listing.items, sys.stdout)
    print_more_hint(listing, sys.stderr)


def print_more_hint(listing: Listing, err: TextIO) -> None:
    """Tell people how to see the rest when a listing was cut."""
    if not listing.next_page_token and not listing.cut:
        return
    of = f" of {listing.total[1]}" if listing.total else ""
    more = f", or --page-token {listing.next_page_token} for more" if listing.next_page_token else ""
    err.write(f"({len(listing.items)}{of} shown; --all for all{more})\n")
