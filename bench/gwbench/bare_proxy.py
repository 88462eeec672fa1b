"""The ceiling of llmgw's stack: aiohttp and uvloop passing requests through, nothing else.

No auth, no limits, no ledger, no JSON parsing: read the body, send it to the one
upstream on one shared ClientSession, pass the answer back (a stream as it arrives).

    python bench/gwbench/bare_proxy.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import uvloop
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    target = request.app[UPSTREAM] + request.path_qs
    session = request.app[SESSION]
    async with session.request(request.method, target, data=body, headers=headers) as up:
        out_headers = {"Content-Type": up.headers.get("Content-Type", "application/json")}
        if up.content_type != "text/event-stream":
            return web.Response(status=up.status, body=await up.read(), headers=out_headers)
        out = web.StreamResponse(status=up.status, headers=out_headers)
        await out.prepare(request)
        async for chunk in up.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


async def main(port: int, upstream: str) -> None:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app[SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
    )
    app.router.add_route("*", "/{path:.*}", relay)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    await app[SESSION].close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
