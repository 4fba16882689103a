"""The engine thread driven from asyncio: streaming, cancellation, limits, failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import torch

from kvferry import LLM, LLMEngine, SamplingParams
from kvferry.services.engine.async_engine import AsyncEngine, EngineDeadError, QueueFullError
from kvferry.services.engine.config import EngineConfig
from kvferry.services.engine.model_runner import KVExport
from kvferry.services.engine.outputs import RequestOutput

CONFIG = EngineConfig(model="tiny", max_model_len=256, num_kv_blocks=64)
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = [[256, *range(65, 65 + n)] for n in (1, 4, 9, 17, 33, 20, 2, 50)]


def run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))  # type: ignore[arg-type]


async def collect(stream: AsyncIterator[RequestOutput]) -> list[int]:
    return [t async for out in stream for t in out.new_token_ids]


async def started(max_pending: int = 256) -> AsyncEngine:
    engine = AsyncEngine(LLMEngine(CONFIG), max_pending=max_pending)
    engine.start()
    return engine


async def wait_free(engine: AsyncEngine) -> None:
    for _ in range(200):
        stats = await engine.stats()
        if stats.free_blocks == stats.total_blocks and stats.num_running == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"blocks not freed: {await engine.stats()}")


def test_concurrent_streams_equal_offline_generation() -> None:
    expected = [o.token_ids for o in LLM(model="tiny", max_model_len=256).generate(PROMPTS, GREEDY)]

    async def main() -> list[list[int]]:
        engine = await started()
        got = await asyncio.gather(
            *(collect(engine.generate(f"r{i}", p, GREEDY)) for i, p in enumerate(PROMPTS))
        )
        await wait_free(engine)
        await engine.shutdown()
        return list(got)

    assert run(main()) == expected


def test_closing_a_stream_early_aborts_and_frees_blocks() -> None:
    async def main() -> None:
        engine = await started()
        stream = engine.generate("r", PROMPTS[-1], replace(GREEDY, max_tokens=200))
        async for out in stream:
            assert not out.finished
            break
        await stream.aclose()  # type: ignore[attr-defined]
        await wait_free(engine)
        assert engine.num_active == 0
        await engine.shutdown()

    run(main())


def test_queue_limit_and_bad_input_leave_the_engine_working() -> None:
    async def main() -> None:
        engine = await started(max_pending=2)
        long = replace(GREEDY, max_tokens=100)
        a = engine.generate("a", PROMPTS[0], long)
        b = engine.generate("b", PROMPTS[1], long)
        await a.__anext__()  # type: ignore[attr-defined]
        await b.__anext__()  # type: ignore[attr-defined]
        with pytest.raises(QueueFullError, match="max_pending=2"):
            await engine.generate("c", PROMPTS[2], GREEDY).__anext__()  # type: ignore[attr-defined]
        await a.aclose()  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="empty"):
            await engine.generate("d", [], GREEDY).__anext__()  # type: ignore[attr-defined]
        assert len(await collect(engine.generate("e", PROMPTS[3], GREEDY))) == 12
        await b.aclose()  # type: ignore[attr-defined]
        await wait_free(engine)
        await engine.shutdown()

    run(main())


def test_remote_prefill_between_two_async_engines() -> None:
    expected = LLM(model="tiny", max_model_len=256).generate([PROMPTS[4]], GREEDY)[0].token_ids

    async def main() -> list[int]:
        prefill, decode = await started(), await started()
        admission = await decode.admit_remote("r", PROMPTS[4], GREEDY)
        assert admission is not None
        loop = asyncio.get_running_loop()
        slabs: asyncio.Queue[tuple[int, torch.Tensor]] = asyncio.Queue()

        def sink(layer: int, kv: torch.Tensor) -> None:  # runs on the prefill engine thread
            loop.call_soon_threadsafe(slabs.put_nowait, (layer, kv))

        export = KVExport(admission.needed_block_positions, sink)
        first = await collect(
            prefill.generate("r", PROMPTS[4], replace(GREEDY, max_tokens=1), kv_export=export)
        )
        layers = decode.engine.model_config.num_hidden_layers
        positions = admission.needed_block_positions
        for _ in range(layers):
            layer, kv = await slabs.get()
            await decode.call(
                lambda e, i=layer, k=kv: e.write_remote_kv("r", positions, i, k[None])
            )
        rest = await collect(decode.complete_remote("r", first[0]))
        await wait_free(prefill)
        await wait_free(decode)
        await prefill.shutdown()
        await decode.shutdown()
        return rest

    assert run(main()) == expected


def test_a_failing_step_ends_every_stream_and_later_calls() -> None:
    async def main() -> None:
        engine = AsyncEngine(LLMEngine(CONFIG))

        def broken() -> list[RequestOutput]:
            raise RuntimeError("boom")

        engine.engine.step = broken  # type: ignore[method-assign]
        engine.start()
        with pytest.raises(EngineDeadError, match="boom"):
            await collect(engine.generate("r", PROMPTS[0], GREEDY))
        with pytest.raises(EngineDeadError):
            await engine.stats()
        await engine.shutdown()

    run(main())


def test_shutdown_ends_open_streams() -> None:
    async def main() -> None:
        engine = await started()
        stream = engine.generate("r", PROMPTS[0], replace(GREEDY, max_tokens=200))
        await stream.__anext__()  # type: ignore[attr-defined]
        await engine.shutdown()
        with pytest.raises(EngineDeadError):
            await collect(stream)

    run(main())
