"""Paging of the short in-memory lists (queues, schedules, topic consumption), AIP-158 style.

A page token names the sort key of the last item sent, not an offset, so a page never repeats
or skips an item that stayed while others were added or removed in between. Tokens are bound
to the list they came from and bounded in size before they are decoded.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from google.protobuf.message import Message

from node.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN_CHARS = 512
"""Longer tokens are refused before decoding; this also bounds the nesting json.loads can meet."""
_MAX_KEY_INT = 2**63 - 1  # keys are SQLite integers (row seqs, times)

T = TypeVar("T")
Key = tuple[str | int, ...]


class PageRequest(Protocol):
    """The paging fields every List request has."""

    @property
    def page_size(self) -> int: ...

    @property
    def page_token(self) -> str: ...


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list and what a client needs to get the next one."""

    items: list[T]
    next_page_token: str
    total_size: int


def bound_kind(kind: str, request: Message, *ignored: str) -> str:
    """`kind` bound to a request's query: its fields except paging (and `ignored`), hashed.

    A token made for one query is refused with another (AIP-158), instead of continuing a
    different result after a row it never contained."""
    query = type(request)()
    query.CopyFrom(request)
    for name in ("page_token", "page_size", *ignored):
        query.ClearField(name)
    digest = hashlib.sha256(query.SerializeToString(deterministic=True)).hexdigest()[:16]
    return f"{kind}:{digest}"


def encode_token(kind: str, key: Key) -> str:
    """The page token that continues the list `kind` after the item whose sort key is `key`."""
    text = json.dumps({"list": kind, "after": list(key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode()


def _key_value_ok(value: object) -> bool:
    if type(value) is int:
        return -_MAX_KEY_INT <= value <= _MAX_KEY_INT
    return type(value) is str


def decode_token(kind: str, token: str, like: Key | None) -> Key:
    """The sort key a token of the list `kind` continues after; InvalidArgument for a token
    that is too long, not ours, of another list or query, or whose key differs from `like`'s shape."""
    malformed = f"page_token {token[:40]!r} is malformed; pass a next_page_token of this list unchanged"
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise InvalidArgument(f"page_token has {len(token)} characters; tokens of this list are shorter")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error, RecursionError) as e:
        raise InvalidArgument(malformed) from e
    foreign = f"does not belong to this list ({kind.split(':')[0]}); start again without one"
    if not isinstance(decoded, dict):
        raise InvalidArgument(f"page_token {token[:40]!r} is malformed: it {foreign}")
    made_for = decoded.get("list")
    if not isinstance(made_for, str) or made_for.split(":")[0] != kind.split(":")[0]:
        raise InvalidArgument(f"page_token {foreign}")
    if made_for != kind:
        raise InvalidArgument(
            "page_token was made for another query; repeat that query unchanged or start again without one"
        )
    after = decoded.get("after")
    if not isinstance(after, list) or not all(_key_value_ok(v) for v in after):
        raise InvalidArgument(malformed)
    if like is not None and [type(v) for v in after] != [type(v) for v in like]:
        raise InvalidArgument(malformed)
    return tuple(after)


def page_of(kind: str, items: Sequence[T], key: Callable[[T], Key], request: PageRequest) -> Page[T]:
    """The page of `items`, in `key` order, that follows the item the request's token names.

    `kind` names the list (tokens of another list are refused); InvalidArgument for a
    page_size outside 0..MAX_PAGE_SIZE (0: DEFAULT_PAGE_SIZE) or a token that is not ours.
    """
    page_size, page_token = request.page_size, request.page_token
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(
            f"page_size {page_size} is out of range; use 1..{MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})"
        )
    ordered = sorted(items, key=key)
    keys = [key(item) for item in ordered]
    start = 0
    if page_token:
        start = bisect.bisect_right(keys, decode_token(kind, page_token, keys[0] if keys else None))
    end = start + (page_size or DEFAULT_PAGE_SIZE)
    token = encode_token(kind, keys[end - 1]) if end < len(ordered) else ""
    return Page(ordered[start:end], token, len(ordered))
