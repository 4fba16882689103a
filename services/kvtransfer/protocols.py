"""The two seams of KV transfer: what a sender offers and what a receiver feeds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from .slab import KVSlab
from .stats import TransferStats


class KVSink(Protocol):
    """Where verified KV lands on the receiving side (the decode worker's cache).

    The gRPC servicer calls it on its event loop, one chunk at a time: it must not block
    (queue slow work, e.g. to the engine thread).
    """

    def accept(self, slab: KVSlab) -> None:
        """Write a verified slab. KeyError: not waiting for this request.
        TransferError or ValueError: this KV cannot be taken (positions not requested,
        layers outside the model, a layout that does not match).

        NOTE: `slab.data` may view the received message's memory (no copy on the way
        in): read it, copy it or keep it (it stays valid while referenced), never write
        into it."""
        ...

    def complete(self, request_id: str, first_token_id: int) -> None:
        """All of the request's KV has arrived and the sender sampled `first_token_id`.
        KeyError: unknown request. TransferError: KV still missing."""
        ...


class KVSender(Protocol):
    """Pushes KV slabs to a receiver's endpoint."""

    async def push(
        self,
        endpoint: str,
        request_id: str,
        slabs: AsyncIterator[KVSlab] | Iterable[KVSlab],
        *,
        first_token_id: int | None = None,
        deadline_s: float,
    ) -> TransferStats:
        """Send every slab (as it arrives, when `slabs` is async) and wait for the
        receiver's answer, resending chunks that failed verification once.

        With `first_token_id` the receiver completes the request after this push. To
        overlap sending with compute, push layers as they finish without it, then push
        no slabs with it. Raises a TransferError subclass (see `errors`) on any failure,
        within `deadline_s` seconds.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
