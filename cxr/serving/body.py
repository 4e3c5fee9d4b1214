"""A request's body read against ``--max-body`` as it streams in, never held whole when it is too large.

A ``Content-Length`` over the limit is refused before a byte of the body is kept, and a chunked body is
counted as it streams in and refused as soon as it passes the limit, so no request holds more than
``max_body`` bytes of body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request

# A refused body this much over the limit is still read to its end and dropped, within DISCARD_S, so that the client
# can read its 413 (what is read is not kept: memory stays within the limit); beyond that it is answered unread.
DISCARD_BYTES = 64 * 2**20
DISCARD_S = 2.0


class BodyTooLarge(Exception):
    """A request body over the limit (HTTP 413); the message says by how much and which option sets it."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, or :class:`BodyTooLarge` once it is known to pass ``limit`` bytes: from its
    ``Content-Length`` before anything is read, else while it streams in (a chunked body), holding no more."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        if int(declared) - limit <= DISCARD_BYTES:
            await _discard(request.stream(), int(declared))
        raise BodyTooLarge(f"the body is {int(declared)} bytes, more than the {limit} this server takes (--max-body)")
    chunks: list[bytes] = []
    total = 0
    stream = request.stream()
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            chunks.clear()
            await _discard(stream, DISCARD_BYTES - (total - limit))
            raise BodyTooLarge(f"the body passed the {limit} bytes this server takes (--max-body)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _discard(stream: AsyncIterator[bytes], budget: int) -> None:
    """Read on and drop what is left of a refused body, up to ``budget`` bytes and :data:`DISCARD_S` seconds.

    A server that closes a connection with unread bytes in it resets it (RFC 9112 9.6 asks for a lingering
    close), and the client can lose the 413 it was sent; once the body has been read to its end, the answer
    arrives. A body still going after that is left unread and its connection closed."""
    with anyio.move_on_after(DISCARD_S):
        async for chunk in stream:
            budget -= len(chunk)
            if budget < 0:
                return
