"""`llmgw serve --demo`, the README's first command: a newcomer gets a working key."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
from pathlib import Path

import openai

from .conftest import LLMGW, free_port


async def test_demo_serves_the_openai_sdk_and_cleans_up() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        LLMGW, "serve", "--demo", "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        banner = b""
        async with asyncio.timeout(15):
            while b"Stop:" not in banner:
                line = await process.stdout.readline()
                assert line, "llmgw serve --demo exited before printing its key"
                banner += line
        text = banner.decode()
        key = re.search(r"API key\s+(sk-internal-\S+)", text)
        base_url = re.search(r"base URL\s+(\S+)", text)
        database = re.search(r"database\s+(\S+)", text)
        assert key and base_url and database
        assert base_url[1] == f"http://127.0.0.1:{port}/v1"

        async with openai.AsyncOpenAI(base_url=base_url[1], api_key=key[1]) as client:
            reply = await client.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
            )
            stream = await client.chat.completions.create(
                model="fake-model",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=3,
                stream=True,
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert reply.choices[0].message.content == " tok0 tok1 tok2"
        assert streamed == " tok0 tok1 tok2"
        assert Path(database[1]).exists()
        # The admin hint works as printed, from a shell without .venv/bin on its PATH.
        hint = re.search(r"Admin: (.+)", text)
        assert hint
        admin = await asyncio.create_subprocess_exec(
            *shlex.split(hint[1]), "--json", stdout=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if k != "PATH"} | {"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        listed, _ = await admin.communicate()
        assert admin.returncode == 0
        assert [k["user_id"] for k in json.loads(listed)] == ["demo"]
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    # It printed a working key: it listens on loopback only (no --host given).
    assert f"llmgw serving on http://127.0.0.1:{port}\n" in stderr.decode()
    assert not Path(database[1]).parent.exists()  # the throwaway database is gone
    assert key[1] not in stderr.decode()
