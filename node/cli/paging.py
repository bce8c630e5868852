"""Paging for listing commands: `--limit N`, `--page-token T`, `--all`, one helper for every list RPC.

A listing fetches pages until it has `--limit` items (asking each page for no more than it still
needs, so the node's next page token continues exactly after the last item shown), or every
page with `--all`. Its JSON output is the RPC's response shape: the items under their field name,
`next_page_token` (empty at the end) and `total_size`.
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
"""The largest page a listing asks for (every v1 list RPC has page_size, page_token, total_size)."""


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
    """The items fetched, the token that continues after them, and the total the RPC reports."""

    field: str
    items: list[Any]
    next_page_token: str
    total_size: int
    unanswered: list[str] | None = None
    """Topology-wide FindJobs: the instances that did not answer some page (None: the RPC has no
    such field)."""

    def to_json(self) -> dict[str, Any]:
        """The listing in the JSON convention (the shape of the RPC's response)."""
        shaped: dict[str, Any] = {
            self.field: [to_json(item) for item in self.items],
            "next_page_token": self.next_page_token,
            "total_size": self.total_size,
        }
        if self.unanswered is not None:
            shaped["partial"] = bool(self.unanswered)
            shaped["unanswered_instances"] = self.unanswered
        return shaped


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
    if args.page_token:
        setattr(request, "page_token", args.page_token)  # noqa: B010  # every list request has one
    items: list[Any] = []
    unanswered: dict[str, None] | None = None
    while True:
        wanted = limit - len(items) if limit else MAX_PAGE_SIZE
        setattr(request, "page_size", min(wanted, MAX_PAGE_SIZE))  # noqa: B010
        response = client.call(method, request)
        items.extend(getattr(response, field))
        if "unanswered_instances" in response.DESCRIPTOR.fields_by_name:
            unanswered = unanswered or {}
            unanswered.update(dict.fromkeys(response.unanswered_instances))
        token = str(response.next_page_token)
        if not token or (limit and len(items) >= limit):
            break
        setattr(request, "page_token", token)  # noqa: B010
    return Listing(
        field, items, token, int(response.total_size), None if unanswered is None else list(unanswered)
    )


def print_listing(listing: Listing, print_items: Callable[[list[Any], TextIO], None]) -> None:
    """The items for people (stdout), then how to see more if the listing was cut (stderr)."""
    print_items(listing.items, sys.stdout)
    print_partial_warning(listing, sys.stderr)
    print_more_hint(listing, sys.stderr)


def print_partial_warning(listing: Listing, err: TextIO) -> None:
    """Warn people when instances did not answer a topology-wide listing."""
    if listing.unanswered:
        names = ", ".join(listing.unanswered)
        err.write(
            f"warning: {len(listing.unanswered)} instance(s) did not answer ({names}): "
            "their jobs are missing from this list and from the total\n"
        )


def print_more_hint(listing: Listing, err: TextIO) -> None:
    """Tell people how to see the rest when a listing was cut."""
    if not listing.next_page_token:
        return
    of = f" of {listing.total_size}"
    more = f", or --page-token {listing.next_page_token} for more"
    err.write(f"({len(listing.items)}{of} shown; --all for all{more})\n")
