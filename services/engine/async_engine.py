"""The engine on its own thread, driven from asyncio (what gRPC workers wrap).

Every call into `LLMEngine` happens on the engine thread: callers submit commands through
a queue and await their results; outputs flow back to per-request asyncio queues. The
thread steps while any request is unfinished and sleeps on the command queue otherwise.

    engine = AsyncEngine(LLMEngine(config), max_pending=256)
    engine.start()
    async for out in engine.generate("r1", prompt_ids, params):
        ...                      # leaving the loop early aborts the request
    await engine.shutdown()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from kvferry.errors import CapacityError
from kvferry.sampling_params import SamplingParams

from .engine import LLMEngine
from .model_runner import KVExport
from .outputs import EngineStats, RequestOutput
from .scheduler import RemoteAdmission

log = logging.getLogger(__name__)

T = TypeVar("T")


_ENDED = object()
"""Put in a request's inbox when `abort` ends its stream."""


class QueueFullError(CapacityError):
    """More requests than the engine's admission queue holds (RESOURCE_EXHAUSTED)."""


class EngineDeadError(RuntimeError):
    """The engine thread stopped (an error in a step, or shutdown)."""


class AsyncEngine:
    def __init__(self, engine: LLMEngine, *, max_pending: int = 256) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.engine = engine
        self.max_pending = max_pending
        self._commands: queue.SimpleQueue[_Command | None] = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = {}
        self._thread = threading.Thread(target=self._run, name="kvferry-engine", daemon=True)
        self._error: BaseException | None = None
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    async def shutdown(self) -> None:
        """Stop the thread; unfinished requests are aborted and their streams end."""
        self._stopping = True
        self._commands.put(None)
        await asyncio.to_thread(self._thread.join, 30.0)

    @property
    def num_active(self) -> int:
        return len(self._streams)

    # -- calls -----------------------------------------------------------------------------
    async def call(self, fn: Callable[[LLMEngine], T]) -> T:
        """Run `fn(engine)` on the engine thread and return its result (or raise its error)."""
        return await asyncio.wrap_future(self.submit(fn))

    def submit(self, fn: Callable[[LLMEngine], T]) -> Future[T]:
        """Queue `fn(engine)` for the engine thread without waiting (commands run in order)."""
        if self._error is not None or self._stopping:
            raise EngineDeadError("the engine is not running") from self._error
        future: Future[T] = Future()
        self._commands.put(_Command(fn, future))
        return future

    async def stats(self) -> EngineStats:
        return await self.call(lambda e: e.stats())

    async def abort(self, request_id: str) -> bool:
        """Abort a request; a stream open on it ends (after what was already produced)."""
        aborted = await self.call(lambda e: e.abort(request_id))
        target = self._streams.pop(request_id, None)
        if target is not None:
            loop, inbox = target
            loop.call_soon_threadsafe(inbox.put_nowait, _ENDED)
        return bool(aborted)

    async def generate(
        self,
        request_id: str,
        prompt: str | Sequence[int],
        params: SamplingParams,
        *,
        kv_export: KVExport | None = None,
        skip_draws: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs. Raises ValueError for bad input, QueueFullError when
        the admission queue is full. Closing the iterator early aborts the request."""

        def start(e: LLMEngine) -> None:
            e.add_request(request_id, prompt, params, kv_export=kv_export, skip_draws=skip_draws)

        async with contextlib.aclosing(self._stream(request_id, start)) as stream:
            async for out in stream:
                yield out

    async def admit_remote(
        self, request_id: str, prompt: Sequence[int], params: SamplingParams, *, skip_draws: int = 0
    ) -> RemoteAdmission | None:
        self._check_capacity(request_id)
        return await self.call(
            lambda e: e.admit_remote(request_id, prompt, params, skip_draws=skip_draws)
        )

    async def complete_remote(
        self, request_id: str, first_token_id: int
    ) -> AsyncIterator[RequestOutput]:
        """Join an admitted request whose KV has arrived; stream its outputs from the first
        token on. Closing the iterator early aborts it."""

        def start(e: LLMEngine) -> None:
            self._deliver(e.complete_remote(request_id, first_token_id))

        # The admission already holds a seat: no capacity check here.
        stream = self._stream(request_id, start, check_capacity=False)
        async with contextlib.aclosing(stream) as outputs:
            async for out in outputs:
                yield out

    async def _stream(
        self, request_id: str, start: Callable[[LLMEngine], None], *, check_capacity: bool = True
    ) -> AsyncGenerator[RequestOutput, None]:
        """Open the request's inbox, run `start` on the engine thread, then drain."""
        inbox = self._open(request_id, check_capacity=check_capacity)
        try:
            await self.call(start)
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        async with contextlib.aclosing(self._drain(request_id, inbox)) as stream:
            async for out in stream:
                yield out

    # -- streams ---------------------------------------------------------------------------
    def _check_capacity(self, request_id: str) -> None:
        if len(self._streams) >= self.max_pending:
            raise QueueFullError(
                f"engine holds {len(self._streams)} requests (max_pending={self.max_pending});"
                " retry later or on another worker"
            )
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in the engine")

    def _open(self, request_id: str, *, check_capacity: bool = True) -> asyncio.Queue[Any]:
        if check_capacity:
            self._check_capacity(request_id)
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), inbox)
        return inbox

    async def _drain(
        self, request_id: str, inbox: asyncio.Queue[Any]
    ) -> AsyncGenerator[RequestOutput, None]:
        finished = False
        try:
            while not finished:
                item = await inbox.get()
                if item is _ENDED:  # aborted: the engine holds nothing more for it
                    finished = True
                    return
                if isinstance(item, BaseException):
                    raise EngineDeadError(f"request {request_id!r} lost: {item}") from item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished and self._error is None and not self._stopping:
                self.submit(lambda e: e.abort(request_id))  # NOTE: no await while closing

    def _deliver(self, out: RequestOutput) -> None:
        target = self._streams.get(out.request_id)
        if target is not None:
            loop, inbox = target
            loop.call_soon_threadsafe(inbox.put_nowait, out)

    # -- the engine thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                # Sleep on the queue when idle; otherwise take what is there and step.
                # A stalled engine (blocks held by requests awaiting KV) waits for a command
                # (KV landing, an abort) instead of spinning.
                block = not self.engine.has_work() or self.engine.stalled
                while True:
                    try:
                        command = self._commands.get(block=block)
                    except queue.Empty:
                        break
                    if command is None:
                        return
                    command.run(self.engine)
                    block = False
                if self.engine.has_work():
                    for out in self.engine.step():
                        self._deliver(out)
        except BaseException as err:
            log.exception("engine thread failed")
            self._error = err
        finally:
            self._fail_all(self._error or EngineDeadError("engine shut down"))

    def _fail_all(self, err: BaseException) -> None:
        for rid, (loop, inbox) in list(self._streams.items()):
            loop.call_soon_threadsafe(inbox.put_nowait, err)
            self._streams.pop(rid, None)
        while True:  # commands that will never run must not leave callers waiting
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command is not None and command.future.set_running_or_notify_cancel():
                command.future.set_exception(EngineDeadError("the engine stopped"))


@dataclass(frozen=True, slots=True)
class _Command:
    fn: Callable[[LLMEngine], Any]
    future: Future[Any]

    def run(self, engine: LLMEngine) -> None:
        if self.future.set_running_or_notify_cancel():
            try:
                self.future.set_result(self.fn(engine))
            except Exception as err:  # handed to the caller, never swallowed
                self.future.set_exception(err)
