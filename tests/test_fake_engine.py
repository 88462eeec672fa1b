"""The simulated vLLM (`llmgw.fake_vllm` with a `SimulationSettings`): token ids and block
hashes, the scheduler step by step on simulated time, the engine on a fake clock, and a
simulated fake over a real socket and from its command line."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from llmgw.fake_vllm import FakeVLLM, FakeVLLMBehaviour, count_prompt_tokens
from llmgw.fake_vllm.engine import Engine, EngineStopped
from llmgw.fake_vllm.kv_cache import NONE_HASH, block_hashes, hash_block_tokens
from llmgw.fake_vllm.scheduler import Request, Scheduler, SimulationSettings
from llmgw.fake_vllm.token_ids import generated_token_id, prompt_token_ids
from llmgw.fake_vllm.tokens import completion_text
from llmgw.load_metrics import parse_load

from .conftest import FakeClock, free_port

SMALL = SimulationSettings(
    max_num_seqs=4,
    num_gpu_blocks=1 + 64,
    block_size=4,
    max_num_batched_tokens=64,
    prefill_time_per_token=0.001,
    decode_time_per_step=0.01,
)


def tokens(n: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n))


def run_until_idle(scheduler: Scheduler, on_step: Callable[[], None] | None = None) -> float:
    """Run steps until nothing is left; the simulated seconds they took."""
    elapsed = 0.0
    while (output := scheduler.step()) is not None:
        elapsed += output.batch.duration
        if on_step is not None:
            on_step()
    return elapsed


def time_to_first_token(scheduler: Scheduler, request: Request) -> float:
    elapsed = 0.0
    while request.num_output_tokens == 0:
        output = scheduler.step()
        assert output is not None
        elapsed += output.batch.duration
    return elapsed


# --- token ids and block hashes ------------------------------------------------------

CHAT_BODIES: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "hello there"}]},
    {"messages": [{"role": "system", "content": "be  brief\n"}, {"role": "user", "content": ""}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}, {"x": 1}]}]},
    {"messages": [{"role": 7, "content": None}, "junk"]},
    {"messages": [], "max_tokens": 3},
    {"prompt": "one two three"},
    {"prompt": ""},
    {"prompt": [5, 6, 7, 2**40]},
    {"prompt": ["just one"]},
    {"input": "an embedding-like body"},
]


@pytest.mark.parametrize("body", CHAT_BODIES)
def test_prompt_ids_are_as_many_as_the_usage_counts(body: dict[str, Any]) -> None:
    ids = prompt_token_ids(body)
    assert ids is not None
    assert len(ids) == count_prompt_tokens(body)
    assert ids == prompt_token_ids(json.loads(json.dumps(body)))
    assert all(0 <= i < 2**32 for i in ids)


def test_a_body_of_several_prompts_is_not_simulated() -> None:
    assert prompt_token_ids({"prompt": ["one", "two"]}) is None
    assert prompt_token_ids({"prompt": [[1, 2], [3]]}) is None


def test_the_next_turn_begins_with_the_previous_turn_and_its_answer() -> None:
    turn = [{"role": "system", "content": "shared rules " * 50}, {"role": "user", "content": "q1"}]
    first = prompt_token_ids({"messages": turn})
    answer = {"role": "assistant", "content": completion_text(5)}
    second = prompt_token_ids({"messages": [*turn, answer, {"role": "user", "content": "q2"}]})
    assert first is not None and second is not None
    generated = [generated_token_id(i) for i in range(5)]
    assert second[: len(first) + 5] == first + generated


def test_block_hashes_chain_over_full_blocks_only() -> None:
    ids = tokens(10)
    hashes = block_hashes(ids, 4)
    assert len(hashes) == 2  # the last 2 tokens make no full block
    assert hashes[0] == hash_block_tokens(None, ids[:4])
    assert hashes[1] == hash_block_tokens(hashes[0], ids[4:8])
    assert hash_block_tokens(None, ids[:4]) == hash_block_tokens(NONE_HASH, ids[:4])
    changed = block_hashes([999, *ids[1:]], 4)
    assert changed[0] != hashes[0] and changed[1] != hashes[1]  # a parent changes its children


def test_block_hashes_are_the_same_in_every_process() -> None:
    code = (
        "from llmgw.fake_vllm.kv_cache import block_hashes;"
        "print(block_hashes(list(range(1000, 1032)), 16)[-1].hex())"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert seen == {block_hashes(tokens(32), 16)[-1].hex()}


# --- the scheduler ---------------------------------------------------------------------


def test_never_more_than_max_num_seqs_run() -> None:
    scheduler = Scheduler(SMALL)
    requests = [scheduler.add_request(tokens(6, 1000 * (i + 1)), 5) for i in range(10)]
    most = 0

    def check() -> None:
        nonlocal most
        stats = scheduler.stats()
        assert stats.running <= SMALL.max_num_seqs
        assert stats.running + stats.waiting == sum(not r.done for r in requests)
        most = max(most, stats.running)

    run_until_idle(scheduler, check)
    assert most == SMALL.max_num_seqs
    assert all(r.status == "finished" and r.num_output_tokens == 5 for r in requests)


def test_requests_are_admitted_first_come_first_served() -> None:
    scheduler = Scheduler(SimulationSettings(max_num_seqs=2, block_size=4, num_gpu_blocks=65))
    requests = [scheduler.add_request(tokens(8, 1000 * (i + 1)), 3 + i % 2) for i in range(6)]
    admitted: list[Request] = []

    def note() -> None:
        admitted.extend(r for r in scheduler.running if r not in admitted)

    run_until_idle(scheduler, note)
    assert admitted == requests


def test_a_request_that_does_not_fit_holds_the_queue_until_blocks_free() -> None:
    # 10 usable blocks of 4 tokens. A holds 8 of them; B needs 3, C only 1: C does not
    # jump the queue (FCFS), both wait until A finishes.
    settings = SimulationSettings(max_num_seqs=8, block_size=4, num_gpu_blocks=1 + 10)
    scheduler = Scheduler(settings)
    a = scheduler.add_request(tokens(29), 3)
    assert scheduler.step() is not None
    b = scheduler.add_request(tokens(12, 2000), 1)
    c = scheduler.add_request(tokens(2, 3000), 1)
    while a.status == "running":
        assert scheduler.stats().waiting == 2 and b.status == c.status == "waiting"
        assert scheduler.step() is not None
    run_until_idle(scheduler)
    assert b.status == c.status == "finished"


def test_chunked_prefill_stays_within_the_token_budget() -> None:
    scheduler = Scheduler(SMALL)  # 64 tokens per step
    decoding = [scheduler.add_request(tokens(3, 1000 * (i + 1)), 50) for i in range(2)]
    assert scheduler.step() is not None  # both prefilled, each with its first token
    assert all(r.num_output_tokens == 1 for r in decoding)
    long = scheduler.add_request(tokens(150, 9000), 2)
    chunks: list[int] = []
    while long.num_output_tokens == 0:
        output = scheduler.step()
        assert output is not None
        scheduled = dict(output.batch.scheduled)
        assert sum(scheduled.values()) <= SMALL.max_num_batched_tokens
        assert all(scheduled[r] == 1 for r in decoding)  # decodes go first, one token each
        chunks.append(scheduled[long])
        assert output.batch.num_prefill_tokens == scheduled[long]
        assert output.batch.duration == pytest.approx(SMALL.step_time(scheduled[long], 2))
    assert chunks == [62, 62, 26]


def test_a_shared_prefix_hits_its_full_blocks_and_starts_sooner() -> None:
    scheduler = Scheduler(SMALL)
    prefix = tokens(50)  # 12 full blocks of 4, and 2 tokens more
    first = scheduler.add_request([*prefix, *tokens(10, 5000)], 2)
    ttft_first = time_to_first_token(scheduler, first)
    run_until_idle(scheduler)
    second = scheduler.add_request([*prefix, *tokens(10, 6000)], 2)
    ttft_second = time_to_first_token(scheduler, second)

    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 48
    assert ttft_first == pytest.approx(SMALL.step_time(60, 0))
    assert ttft_second == pytest.approx(SMALL.step_time(60 - 48, 0))
    assert ttft_second < ttft_first
    stats = scheduler.stats()
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (120, 48)


def test_a_request_admitted_in_the_same_step_hits_what_an_earlier_one_schedules() -> None:
    scheduler = Scheduler(SMALL)
    prefix = tokens(20)
    a = scheduler.add_request([*prefix, 1], 2)
    b = scheduler.add_request([*prefix, 2], 2)
    output = scheduler.step()
    assert output is not None and len(output.batch.scheduled) == 2
    assert (a.num_cached_tokens, b.num_cached_tokens) == (0, 20)


def test_a_fully_cached_prompt_still_computes_its_last_block() -> None:
    # vLLM caps a hit at num_tokens - 1 so the last token's logits are computed; hits
    # are whole blocks, so a block-aligned prompt recomputes its whole last block.
    scheduler = Scheduler(SMALL)
    scheduler.add_request(tokens(16), 1)
    run_until_idle(scheduler)
    again = scheduler.add_request(tokens(16), 1)
    run_until_idle(scheduler)
    assert again.num_cached_tokens == 12
    assert scheduler.stats().prefix_cache_hits == 12


def test_freed_blocks_are_evicted_least_recently_freed_first() -> None:
    # 8 usable blocks of 4 tokens; each prompt is 8 tokens (2 blocks), max_tokens 1.
    settings = SimulationSettings(block_size=4, num_gpu_blocks=1 + 8)
    scheduler = Scheduler(settings)
    prompts = [tokens(8, 1000 * (i + 1)) for i in range(5)]
    hashes = [block_hashes(p, 4) for p in prompts]
    for prompt in prompts[:4]:  # one at a time: each finishes before the next comes
        scheduler.add_request(prompt, 1)
        run_until_idle(scheduler)
    assert all(scheduler.pool.is_cached(h) for hs in hashes[:4] for h in hs)
    assert scheduler.pool.num_free_blocks == 8  # all cached, none held

    scheduler.add_request(prompts[4], 1)  # needs 2 blocks: the first prompt's go
    run_until_idle(scheduler)
    assert not any(scheduler.pool.is_cached(h) for h in hashes[0])
    assert all(scheduler.pool.is_cached(h) for hs in hashes[1:] for h in hs)

    scheduler.add_request(prompts[1], 1)  # a hit takes blocks out of the LRU order...
    run_until_idle(scheduler)
    scheduler.add_request(tokens(8, 7000), 1)  # ...so the third prompt's go next
    run_until_idle(scheduler)
    assert not any(scheduler.pool.is_cached(h) for h in hashes[2])
    assert all(scheduler.pool.is_cached(h) for h in hashes[1] + hashes[3] + hashes[4])


def test_a_finished_request_loses_its_last_blocks_first() -> None:
    # 8 usable blocks of 4 tokens. The first request's 4 blocks are freed tail first, so
    # when 6 blocks are needed (4 never used, then 2 of its) its prefix head survives.
    settings = SimulationSettings(block_size=4, num_gpu_blocks=1 + 8)
    scheduler = Scheduler(settings)
    hashes = block_hashes(tokens(16), 4)
    scheduler.add_request(tokens(16), 1)
    run_until_idle(scheduler)
    scheduler.add_request(tokens(24, 5000), 1)
    run_until_idle(scheduler)
    assert [scheduler.pool.is_cached(h) for h in hashes] == [True, True, False, False]
    again = scheduler.add_request([*tokens(8), 77], 1)
    run_until_idle(scheduler)
    assert again.num_cached_tokens == 8


def test_blocks_held_by_a_running_request_are_never_evicted() -> None:
    settings = SimulationSettings(block_size=4, num_gpu_blocks=1 + 12, max_num_seqs=4)
    scheduler = Scheduler(settings)
    long = scheduler.add_request(tokens(8), 30)  # holds 2 blocks, growing to 10
    assert scheduler.step() is not None
    prefix_hashes = block_hashes(tokens(8), 4)
    for i in range(40):  # short requests churn through the remaining blocks
        scheduler.add_request(tokens(4, 10_000 + 10 * i), 2)
        output = scheduler.step()
        assert output is not None
        held = {block.block_id for block in long.blocks}
        assert not held & {block.block_id for block in scheduler.pool.free_queue()}
        if long.status == "running":
            assert all(scheduler.pool.is_cached(h) for h in prefix_hashes)
            assert all(block.ref_cnt >= 1 for block in long.blocks)
    assert scheduler.pool.num_evictions > 0
    run_until_idle(scheduler)
    assert long.status == "finished" and long.num_output_tokens == 30


def test_decodes_short_of_blocks_preempt_the_newest_request() -> None:
    # 6 usable blocks of 4 tokens; two requests of 4 prompt tokens that each grow to 12
    # tokens (3 blocks) cannot both fit at their peak.
    settings = SimulationSettings(block_size=4, num_gpu_blocks=1 + 5, max_num_seqs=2)
    scheduler = Scheduler(settings)
    first = scheduler.add_request(tokens(4), 9)
    second = scheduler.add_request(tokens(4, 2000), 9)
    run_until_idle(scheduler)
    assert second.num_preemptions >= 1 and first.num_preemptions == 0
    assert first.status == second.status == "finished"
    assert first.token_ids[4:] == second.token_ids[4:] == [generated_token_id(i) for i in range(9)]
    stats = scheduler.stats()
    assert stats.num_preemptions == second.num_preemptions
    assert stats.prefix_cache_queries == 8  # a resumed request is not counted again


def test_usage_counts_blocks_held_not_blocks_cached() -> None:
    scheduler = Scheduler(SMALL)  # 64 usable blocks
    request = scheduler.add_request(tokens(10), 5)
    assert scheduler.step() is not None
    assert scheduler.stats().kv_cache_usage == pytest.approx(3 / 64)  # 11 tokens, 3 blocks
    scheduler.abort(request)
    stats = scheduler.stats()
    assert (stats.running, stats.waiting, stats.kv_cache_usage) == (0, 0, 0.0)
    assert request.status == "aborted"
    again = scheduler.add_request(tokens(10), 1)  # the aborted one's blocks stay cached
    assert scheduler.step() is not None
    assert again.num_cached_tokens == 8


def test_a_request_aborted_while_waiting_never_runs() -> None:
    scheduler = Scheduler(SimulationSettings(max_num_seqs=1))
    scheduler.add_request(tokens(10), 3)
    waiting = scheduler.add_request(tokens(10, 2000), 3)
    scheduler.abort(waiting)
    run_until_idle(scheduler)
    assert waiting.status == "aborted" and waiting.num_output_tokens == 0
    assert scheduler.stats().prefix_cache_queries == 10


@pytest.mark.parametrize(
    ("settings", "prompt", "cached", "output"),
    [
        (SimulationSettings(), 6000, 0.9, 64),
        (SimulationSettings(), 6000, 0.0, 64),  # the KV cache holds only 10 such
        (SimulationSettings(decode_time_per_seq=0.001), 2000, 0.5, 128),
        (SimulationSettings(max_num_seqs=64), 500, 0.0, 256),
    ],
)
def test_capacity_is_what_a_saturated_server_completes(
    settings: SimulationSettings, prompt: int, cached: float, output: int
) -> None:
    scheduler = Scheduler(settings)
    shared = tokens(int(prompt * cached), 100)
    fresh = iter(range(10**6, 10**8))
    elapsed, done, start = 0.0, 0, (0.0, 0)
    while done < 300:
        while len(scheduler.waiting) < 4:  # always more waiting than can run
            own = [next(fresh) for _ in range(prompt - len(shared))]
            scheduler.add_request(shared + own, output)
        step = scheduler.step()
        assert step is not None
        elapsed += step.batch.duration
        done += len(step.finished)
        if done >= 50 and start == (0.0, 0):  # past the start-up transient
            start = (elapsed, done)
    measured = (done - start[1]) / (elapsed - start[0])
    assert measured == pytest.approx(settings.capacity(prompt, cached, output), rel=0.06)


def test_settings_refuse_a_cache_smaller_than_one_request() -> None:
    with pytest.raises(ValueError, match="max_model_len 32768"):
        SimulationSettings(num_gpu_blocks=1024).check_model_len(32768)
    SimulationSettings(num_gpu_blocks=2049).check_model_len(32768)
    with pytest.raises(ValueError, match="max_num_seqs"):
        SimulationSettings(max_num_seqs=0)
    with pytest.raises(ValueError, match="capacity"):
        SimulationSettings().capacity(1000, 0.5, 0)


# --- the engine on a fake clock ----------------------------------------------------------


def sleeping_on(clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    return sleep


async def test_the_engine_hands_out_tokens_as_its_steps_end(clock: FakeClock) -> None:
    engine = Engine(SMALL, clock=clock, sleep=sleeping_on(clock))
    task = asyncio.create_task(engine.run())
    try:
        start = clock.monotonic()
        async with engine.generate(tokens(20), 3) as generation:
            await generation.until(0)
            assert generation.num_output_tokens >= 1
            await generation.until(2)
            assert generation.num_output_tokens == 3 and generation.done
        assert generation.first_token_at is not None
        assert generation.first_token_at - start == pytest.approx(SMALL.step_time(20, 0))
        elapsed = clock.monotonic() - start
        assert elapsed == pytest.approx(SMALL.step_time(20, 0) + 2 * SMALL.step_time(0, 1))
        assert engine.stats().running == 0
    finally:
        task.cancel()


async def test_leaving_a_generation_early_aborts_it(clock: FakeClock) -> None:
    engine = Engine(SMALL, clock=clock, sleep=sleeping_on(clock))
    task = asyncio.create_task(engine.run())
    try:
        async with engine.generate(tokens(20), 100) as generation:
            await generation.until(1)
            assert engine.stats().running == 1 and engine.stats().kv_cache_usage > 0
        stats = engine.stats()
        assert (stats.running, stats.waiting, stats.kv_cache_usage) == (0, 0, 0.0)
        assert not generation.done or generation.num_output_tokens < 100
    finally:
        task.cancel()


async def test_waiters_fail_when_the_engine_stops(clock: FakeClock) -> None:
    engine = Engine(SMALL, clock=clock, sleep=sleeping_on(clock))
    task = asyncio.create_task(engine.run())
    async with engine.generate(tokens(20), 200) as generation:
        await generation.until(0)
        task.cancel()
        with pytest.raises(EngineStopped):
            await generation.until(199)
    with pytest.raises(EngineStopped):
        async with engine.generate(tokens(5), 1):
            pass


# --- over a real socket -------------------------------------------------------------------

SYSTEM = " ".join(f"rule{i}" for i in range(300))


def chat(user: str, max_tokens: int) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    options = {"include_usage": True}
    return {"model": "m", "messages": messages, "max_tokens": max_tokens, "stream": True} | {
        "stream_options": options
    }


async def read_stream(resp: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    chunks = []
    async for line in resp.content:
        if line.startswith(b"data: {"):
            chunks.append(json.loads(line[6:]))
    return chunks


async def test_a_simulated_fake_streams_and_reports_its_engine() -> None:
    settings = SimulationSettings(max_num_seqs=2, decode_time_per_step=0.01)
    fake = FakeVLLM(FakeVLLMBehaviour(models=["m"], simulation=settings))
    await fake.start()
    engine = fake.engine
    assert engine is not None
    bodies = [chat(f"question {i}", 100) for i in range(3)]
    try:
        async with aiohttp.ClientSession() as session:

            async def ask(body: dict[str, Any]) -> list[dict[str, Any]]:
                async with session.post(fake.url + "/v1/chat/completions", json=body) as resp:
                    assert resp.status == 200
                    return await read_stream(resp)

            answers = asyncio.gather(*(ask(b) for b in bodies))
            await fake.behaviour.wait_until(lambda: engine.stats().waiting == 1)
            async with session.get(fake.url + "/metrics") as resp:
                load = parse_load(await resp.text())["m"]
            assert (load.running, load.waiting) == (2, 1)
            assert 0 < load.kv_cache_usage < 1
            streams = await answers
            async with session.get(fake.url + "/metrics") as resp:
                after = parse_load(await resp.text())["m"]
    finally:
        await fake.stop()

    for body, chunks in zip(bodies, streams, strict=True):
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == completion_text(100)
        usage = chunks[-1]["usage"]
        assert usage["prompt_tokens"] == count_prompt_tokens(body)
        assert usage["completion_tokens"] == 100
    ids = [prompt_token_ids(b) for b in bodies]
    assert ids[0] is not None and ids[1] is not None
    common = next(i for i, (x, y) in enumerate(zip(ids[0], ids[1], strict=False)) if x != y)
    assert (after.running, after.waiting, after.kv_cache_usage) == (0, 0, 0.0)
    assert after.prefix_queries == sum(count_prompt_tokens(b) for b in bodies)
    assert after.prefix_hits == 2 * (common // settings.block_size * settings.block_size)


async def test_a_simulated_answer_takes_the_modelled_time_and_a_leaver_frees_its_blocks() -> None:
    settings = SimulationSettings(decode_time_per_step=0.01, prefill_time_per_token=0.0001)
    behaviour = FakeVLLMBehaviour(models=["m"], simulation=settings)
    fake = FakeVLLM(behaviour)
    await fake.start()
    engine = fake.engine
    assert engine is not None
    body = chat("why", 20) | {"stream": False, "stream_options": None}
    prompt = count_prompt_tokens(body)
    try:
        async with aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with session.post(fake.url + "/v1/chat/completions", json=body) as resp:
                answer = await resp.json()
            took = loop.time() - started
            assert answer["usage"]["prompt_tokens"] == prompt
            assert answer["usage"]["completion_tokens"] == 20
            assert took >= settings.step_time(prompt, 0) + 19 * settings.step_time(0, 1)

            resp = await session.post(fake.url + "/v1/chat/completions", json=chat("go", 1000))
            await resp.content.readline()  # the first event: the request is running
            assert engine.stats().running == 1
            resp.close()
            await behaviour.wait_until(lambda: behaviour.aborted == 1)
            await behaviour.wait_until(lambda: engine.stats().running == 0)
            assert engine.stats().kv_cache_usage == 0.0
    finally:
        await fake.stop()


def test_the_command_line_needs_simulate_for_simulation_settings() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmgw.fake_vllm", "--max-num-seqs", "4"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "need --simulate" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "llmgw.fake_vllm", "--simulate", "--num-gpu-blocks", "8"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "raise num_gpu_blocks" in done.stderr


async def test_the_command_line_serves_a_simulation() -> None:
    port = free_port()
    argv = [
        *("-m", "llmgw.fake_vllm", "--port", str(port), "--model", "m"),
        *("--max-model-len", "32768", "--simulate", "--max-num-seqs", "16"),
        *("--num-gpu-blocks", "4096", "--block-size", "16", "--max-num-batched-tokens", "2048"),
        *("--prefill-time-per-token", "0.0001", "--decode-time-per-step", "0.002"),
        *("--tokens", "8"),
    ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        url = line.removeprefix("listening on ")
        body = chat("hello", 8) | {"max_tokens": None}
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(2):
                async with session.post(url + "/v1/chat/completions", json=body) as resp:
                    chunks = await read_stream(resp)
                assert chunks[-1]["usage"]["completion_tokens"] == 8  # --tokens
            async with session.get(url + "/metrics") as resp:
                load = parse_load(await resp.text())["m"]
        assert load.prefix_queries == 2 * count_prompt_tokens(body)
        assert load.prefix_hits == (count_prompt_tokens(body) - 1) // 16 * 16
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
