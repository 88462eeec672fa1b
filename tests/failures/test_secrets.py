"""Case 13: a key, password or token is shown once, where it is made, and nowhere else.

One full run of `llmgw serve` (a real process with its own config, log, database and
admin socket) goes through every door: the CLI, the OpenAI SDK, raw HTTP with bad
requests of every kind, the remote admin API, and the TUI. Everything the run
produces is kept as evidence: every response (headers and body), every CLI output,
every TUI screen, the gateway's stdout, stderr and log file, and, once the gateway has
stopped, every file it wrote (the database with its -wal and -shm, the backup). Each
piece is then searched for every secret, except the one answer that hands that secret
out (a create, a rotate, a login). The run is made twice: with debug logging as JSON to
a file, and with the default logging (info, text, stderr).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import secrets
import signal
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import httpx2
import openai
import orjson
import pytest
from textual.pilot import Pilot
from textual.worker import WorkerState

from llmgw.admin_client import AdminClient
from llmgw.config import LoggingSettings
from llmgw.fake_vllm import FakeVLLM
from llmgw.keys import hash_key
from llmgw.logs import configure_logging
from tui.app import LlmgwTui
from tui.new_key import NewKeyScreen

from ..conftest import LLMGW, CliRun, Gateway, config_file_env, free_port, run_llmgw, wait_healthy
from ..test_tui_keys import open_keys_tab, row_of, select_key, table, until
from .conftest import assert_settled
from .wire import Wire

MODEL = "fake-model"
CHAT: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
ADMIN_SECRET = "admin-signing-" + secrets.token_urlsafe(24)
UPSTREAM_KEY = "upstream-key-" + secrets.token_urlsafe(24)

LOG_SETUPS = {
    "debug-json-file": '[logging]\nlevel = "debug"\nformat = "json"\nfile = "{root}/log/gw.log"\n',
    "default-stderr": "",
}


@dataclass(frozen=True)
class Secret:
    name: str
    needles: tuple[str, ...]  # the whole secret first, then its distinctive parts
    handed_out: bool  # by a create, rotate or login answer (a password never is)
    # A mistyped copy shares most of the real secret, so the real one's answer holds it.
    variant_of: str | None = None


@dataclass(frozen=True)
class Piece:
    where: str
    data: bytes
    may_carry: frozenset[str]  # names of the secrets this piece legitimately hands out


@dataclass
class Evidence:
    """Every byte the run produced, and every secret it made."""

    secrets: dict[str, Secret] = field(default_factory=dict)
    pieces: list[Piece] = field(default_factory=list)

    def key(
        self, name: str, key: str, *also: str, made: bool = True, variant_of: str | None = None
    ) -> str:
        """`made`: the gateway made it (and handed it out); else a client made it up."""
        # The 20 characters after `sk-internal-` and the last 20: a key cut short or
        # quoted from either end is still caught. The display prefix is public.
        needles = (key, key[12:32], key[-20:], *also)
        self._add(Secret(name, needles, made and not variant_of, variant_of))
        return key

    def token(self, name: str, token: str) -> str:
        # A JWT's header and claims are not secret (base64 of public facts); the
        # signature is what makes it a credential.
        self._add(Secret(name, (token, token.rsplit(".", 1)[1]), True))
        return token

    def password(self, name: str, password: str) -> str:
        self._add(Secret(name, (password, password[2:-2]), False))
        return password

    def setting(self, name: str, value: str) -> str:
        self._add(Secret(name, (value,), False))
        return value

    def _add(self, secret: Secret) -> None:
        assert secret.name not in self.secrets
        self.secrets[secret.name] = secret

    def add(self, where: str, data: bytes | str, may_carry: Iterable[str] = ()) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.pieces.append(Piece(where, raw, frozenset(may_carry)))

    def leaks(self) -> list[str]:
        found = []
        for piece in self.pieces:
            for secret in self.secrets.values():
                if {secret.name, secret.variant_of} & piece.may_carry:
                    continue
                hits = [n for n in secret.needles if n.encode() in piece.data]
                if hits:
                    found.append(f"{secret.name} ({hits[0]!r}) in {piece.where}")
        return found

    def not_handed_out(self) -> list[str]:
        """Secrets missing from the answer that handed them out: were it so, the search
        for them (or the capture of that answer) would be broken."""
        return [
            s.name
            for s in self.secrets.values()
            if s.handed_out
            and not any(
                s.name in p.may_carry and s.needles[0].encode() in p.data for p in self.pieces
            )
        ]

    def piece(self, where: str) -> bytes:
        return b"".join(p.data for p in self.pieces if p.where == where)


def raw_headers(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name + b": " + value + b"\n" for name, value in headers)


def typo(secret: str, at: int) -> str:
    """`secret` with the character at `at` changed, as a person mistypes it."""
    return secret[:at] + ("A" if secret[at] != "A" else "B") + secret[at + 1 :]


@dataclass
class Run:
    """The gateway process and the recording clients the run goes through."""

    root: Path
    url: str
    socket: Path
    http: aiohttp.ClientSession
    evidence: Evidence

    async def cli(
        self, *args: str, stdin: str | None = None, carries: Iterable[str] = (), code: int = 0
    ) -> CliRun:
        if "--url" not in args:
            args = ("--socket", str(self.socket), *args)
        result = await run_llmgw(*args, stdin=stdin, env=config_file_env())
        shown = " ".join(a if len(a) < 40 else "…" for a in args)
        self.evidence.add(f"`llmgw {shown}` stdout", result.stdout, carries)
        self.evidence.add(f"`llmgw {shown}` stderr", result.stderr)
        assert result.code == code, (args, result.stderr)
        return result

    async def call(
        self,
        method: str,
        path: str,
        *,
        carries: Iterable[str] = (),
        bearer: str | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as resp:
            body = await resp.read()
        self.evidence.add(
            f"HTTP {method} {path[:40]} -> {resp.status}",
            raw_headers(resp.raw_headers) + body,
            carries,
        )
        parsed = orjson.loads(body) if resp.content_type == "application/json" else body
        return resp.status, parsed

    async def raw(self, what: str, request: bytes) -> bytes:
        """Send bytes no HTTP client would; the whole answer up to the gateway's close."""
        async with await Wire.open(self) as wire:
            await wire.send(request)
            answer = await wire.closed_by_gateway()
        self.evidence.add(f"raw {what}", answer)
        return answer

    def sdk(self, key: str) -> openai.AsyncOpenAI:
        """The OpenAI SDK, keeping every response it receives (streams read whole first)."""

        async def keep(response: httpx2.Response) -> None:
            await response.aread()
            request = response.request
            self.evidence.add(
                f"SDK {request.method} {request.url.path} -> {response.status_code}",
                raw_headers(response.headers.raw) + response.content,
            )

        client = httpx2.AsyncClient(event_hooks={"response": [keep]}, timeout=30)
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=key, max_retries=0, http_client=client
        )


@asynccontextmanager
async def serving(
    root: Path, fake: FakeVLLM, log_setup: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`llmgw serve` as a real process; its stdout and stderr go to files in `root`."""
    port = free_port()
    config = root / "llmgw.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}

[admin]
socket = "{root}/admin.sock"
secret_key = "{ADMIN_SECRET}"

[database]
path = "{root}/llmgw.db"

[[upstreams]]
url = "{fake.url}"
api_key = "{UPSTREAM_KEY}"

{log_setup.format(root=root)}"""
    )
    with (root / "stdout").open("wb") as out, (root / "stderr").open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            LLMGW, "serve", "--config", str(config), stdout=out, stderr=err,
            env=config_file_env(),
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url, process, root / "stderr")
        yield process, url
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def settle(pilot: Pilot[None]) -> None:
    """Until the TUI's workers (but the endless stats stream) have delivered."""

    def idle() -> bool:
        return not any(
            w.group != "stats" and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
            for w in pilot.app.workers
        )

    await until(pilot, idle)


async def use_keys(run: Run) -> None:
    """The CLI makes keys; the SDK and raw HTTP use them, rightly and wrongly."""
    ev = run.evidence
    added = await run.cli(
        "key", "add", "--user", "alice", "--tier", "premium", "--json", carries={"alice's key"}
    )
    created = orjson.loads(added.stdout)
    basic = base64.b64encode(f"{created['key']}:".encode()).decode()  # as `curl -u KEY:` sends it
    alice = ev.key("alice's key", created["key"], basic)
    added = await run.cli("key", "add", "--user", "bob", carries={"bob's key"})  # the text form
    bob = ev.key("bob's key", added.stdout.strip())
    unknown = ev.key("an unknown key", "sk-internal-" + secrets.token_urlsafe(32), made=False)
    mistyped = ev.key("alice's key with a typo", typo(alice, 40), variant_of="alice's key")

    async with run.sdk(alice) as sdk:
        reply = await sdk.chat.completions.create(**CHAT, max_tokens=3)
        assert reply.choices[0].message.content
        stream = await sdk.chat.completions.create(
            **CHAT, max_tokens=3, stream=True, stream_options={"include_usage": True}
        )
        assert [chunk async for chunk in stream][-1].usage is not None
        stream = await sdk.completions.create(model=MODEL, prompt="once", max_tokens=2, stream=True)
        assert len([chunk async for chunk in stream]) > 1
        await sdk.embeddings.create(model=MODEL, input="hello")
        assert [m.id async for m in sdk.models.list()] == [MODEL]
    for wrong in (unknown, mistyped):
        async with run.sdk(wrong) as sdk:
            with pytest.raises(openai.AuthenticationError) as caught:
                await sdk.chat.completions.create(**CHAT, max_tokens=1)
        ev.add("SDK AuthenticationError", str(caught.value))

    refused = [
        {"Authorization": f"Bearer {unknown}"},
        {"x-api-key": unknown},
        {"Authorization": f"Bearer {mistyped}"},
        {"x-api-key": mistyped},
        {"Authorization": f"Token {alice}"},
        {"Authorization": alice},  # no scheme at all
        {"Authorization": f"Basic {basic}"},
    ]
    for headers in refused:
        status, _ = await run.call("POST", "/v1/chat/completions", json=CHAT, headers=headers)
        assert status == 401
    assert (await run.call("GET", f"/v1/models?api_key={alice}"))[0] == 401
    assert (await run.call("GET", f"/v1/models?api_key={alice}", bearer=unknown))[0] == 401
    broken = b'{"model": "fake-model", "api_key": "' + unknown.encode() + b'", "messages": ['
    json_type = {"Content-Type": "application/json"}
    status, _ = await run.call(
        "POST", "/v1/chat/completions", data=broken, bearer=alice, headers=json_type
    )
    assert status == 400
    assert (await run.call("GET", "/admin/api/keys", bearer=alice))[0] == 401  # not an admin token
    too_long = {"Authorization": f"Bearer {alice} {'x' * 20_000}"}
    status, _ = await run.call("POST", "/v1/chat/completions", json=CHAT, headers=too_long)
    assert status in (400, 431)
    key, end = alice.encode(), b"\r\n\r\n"
    for what, request in (
        ("request line with junk", b"GET /v1/models?key=" + key + b" HTTP/1.1 junk" + end),
        (
            "request line too long",
            b"GET /v1/models?key=" + key + b"x" * 10_000 + b" HTTP/1.1" + end,
        ),
        ("header without a colon", b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBearer " + key + end),
        ("bad method", b"G\x01T /v1/models HTTP/1.1\r\nAuthorization: Bearer " + key + end),
        (
            "NUL in a header",
            b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer " + key + b"\0" + end,
        ),
    ):
        assert re.match(rb"HTTP/1\.[01] 400 ", await run.raw(what, request))

    # Rotate bob's key (the old secret is refused), revoke alice's.
    [bob_key] = orjson.loads((await run.cli("key", "list", "--user", "bob", "--json")).stdout)
    rotation = await run.cli(
        "key", "rotate", str(bob_key["id"]), "--json", carries={"bob's new key"}
    )
    bob2 = ev.key("bob's new key", orjson.loads(rotation.stdout)["key"])
    assert (await run.call("GET", "/v1/models", bearer=bob))[0] == 401
    async with run.sdk(bob2) as sdk:
        await sdk.chat.completions.create(**CHAT, max_tokens=1)
    status, _ = await run.call(  # the other header a key may come in: not passed upstream
        "POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 1}, headers={"x-api-key": bob2}
    )
    assert status == 200
    await run.cli("key", "revoke", str(created["id"]))
    async with run.sdk(alice) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.models.list()
    ev.add("SDK AuthenticationError for a revoked key", str(caught.value))


async def administer(run: Run) -> None:
    """Admin users: passwords on stdin, logins, tokens used and refused, passwords changed."""
    ev = run.evidence
    first = ev.password("ops's first password", "first-" + secrets.token_urlsafe(12))
    second = ev.password("ops's second password", "second-" + secrets.token_urlsafe(12))
    third = ev.password("ops's third password", "third-" + secrets.token_urlsafe(12))
    weak = ev.password("a too weak password", "wk-" + secrets.token_urlsafe(5))
    wrong = ev.password("a wrong password", "wrong-" + secrets.token_urlsafe(12))
    await run.cli("admin", "add", "ops", "--password-stdin", stdin=first + "\n")
    await run.cli("admin", "add", "weakling", "--password-stdin", stdin=weak + "\n", code=2)

    async def login(password: str, carries: str = "", user: str = "ops") -> tuple[int, Any]:
        body = {"username": user, "password": password}
        return await run.call("POST", "/admin/api/login", json=body, carries={carries})

    # Fewer failures than the throttle allows: this case is about what is written.
    assert (await login(wrong))[0] == 401
    assert (await login(typo(first, len(first) - 1)))[0] == 401  # caught by first[2:-2]
    assert (await login(first, user="mallory"))[0] == 401
    status, answer = await login(first, "the first token")
    assert status == 200
    token = ev.token("the first token", answer["access_token"])
    reads = ["/keys", "/audit", "/admins", "/usage?days=1", "/stats", "/requests", "/tiers"]
    for path in reads:
        assert (await run.call("GET", "/admin/api" + path, bearer=token))[0] == 200
    status, carol = await run.call(
        "POST", "/admin/api/keys", json={"user_id": "carol"}, bearer=token, carries={"carol's key"}
    )
    assert status == 201
    ev.key("carol's key", carol["key"])
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert (await run.call("GET", "/admin/api/keys", bearer=forged))[0] == 401

    remote = ("--url", run.url)
    out = await run.cli(
        *remote,
        "admin",
        "login",
        "ops",
        "--password-stdin",
        stdin=first + "\n",
        carries={"the second token"},
    )
    token2 = ev.token("the second token", out.stdout.strip())
    await run.cli(*remote, "--token", token2, "key", "list", "--json")
    await run.cli(*remote, "--token", token2, "audit", "--json")

    await run.cli("admin", "passwd", "ops", "--password-stdin", stdin=second + "\n")
    assert (await run.call("GET", "/admin/api/keys", bearer=token))[0] == 401
    await run.cli(*remote, "--token", token2, "key", "list", code=1)
    assert (await login(first))[0] == 401
    status, answer = await login(second, "the third token")
    assert status == 200
    token3 = ev.token("the third token", answer["access_token"])
    status, _ = await run.call(
        "PUT", "/admin/api/admins/ops", json={"password": third}, bearer=token3
    )
    assert status == 200
    status, answer = await login(third, "the fourth token")
    assert status == 200
    token4 = ev.token("the fourth token", answer["access_token"])
    assert (await run.call("GET", "/admin/api/audit", bearer=token4))[0] == 200


async def drive_the_tui(run: Run) -> None:
    """Create and rotate a key in the TUI; every screen after the secret's own."""
    ev = run.evidence
    async with AdminClient(run.socket) as admin:
        keys = len(await admin.list_keys())
    app = LlmgwTui(run.socket)
    # Notices are part of the screen a person sees (run_test leaves them out by default).
    async with app.run_test(size=(160, 50), notifications=True) as pilot:
        await open_keys_tab(pilot, keys)
        await pilot.press("n")
        await settle(pilot)
        await pilot.press(*"dave")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, NewKeyScreen))
        assert isinstance(app.screen, NewKeyScreen)
        dave = ev.key("dave's key", app.screen.secret)
        ev.add("TUI: the new-key screen", app.export_screenshot(simplify=True), {"dave's key"})
        await pilot.press("escape")
        async with AdminClient(run.socket) as admin:
            [listed] = await admin.list_keys(user_id="dave")
        await until(pilot, lambda: not isinstance(app.screen, NewKeyScreen))
        await until(pilot, lambda: str(listed["id"]) in [r.value for r in table(app).rows])
        await settle(pilot)
        ev.add("TUI: keys after the new-key screen", app.export_screenshot(simplify=True))

        await select_key(pilot, listed["id"])
        await pilot.press("o", "y")
        await until(pilot, lambda: isinstance(app.screen, NewKeyScreen))
        assert isinstance(app.screen, NewKeyScreen)
        dave2 = ev.key("dave's new key", app.screen.secret)
        ev.add("TUI: the rotated key", app.export_screenshot(simplify=True), {"dave's new key"})
        await pilot.press("escape")
        await until(pilot, lambda: row_of(app, listed["id"])["key_prefix"] == dave2[:16])
        await settle(pilot)
        ev.add("TUI: keys after the rotated-key screen", app.export_screenshot(simplify=True))
        for tab in "dutk":
            await pilot.press(tab)
            await settle(pilot)
            ev.add(f"TUI: tab {tab}", app.export_screenshot(simplify=True))
        # run_test takes the widgets apart from this task while the app's own task may
        # still be handling a stats tick (which then finds no dashboard to draw on): end
        # the stream and let the ticks already queued land first.
        app.workers.cancel_group(app, "stats")
        await pilot.pause()
    async with run.sdk(dave2) as sdk:
        await sdk.chat.completions.create(**CHAT, max_tokens=1)
    assert (await run.call("GET", "/v1/models", bearer=dave))[0] == 401


async def report(run: Run) -> None:
    """Every listing and report the CLI has, and the public status pages."""
    for args in (
        ("key", "list"),
        ("key", "list", "--json"),
        ("key", "show", "1", "--json"),
        ("usage", "--json"),
        ("usage", "--by", "key"),
        ("audit", "--json", "--limit", "500"),
        ("audit",),
        ("status",),
        ("status", "--json"),
        ("admin", "list", "--json"),
        ("db", "backup", str(run.root / "backup.db")),
        ("config", "check", str(run.root / "llmgw.toml")),  # shows set secrets as ***
        ("config", "check", "--json", str(run.root / "llmgw.toml")),
    ):
        await run.cli(*args)
    for path in ("/health", "/metrics"):
        assert (await run.call("GET", path))[0] == 200


def written_under(root: Path) -> dict[Path, bytes]:
    """Every file in `root` but the config (the one place the operator's secrets belong)."""
    config = root / "llmgw.toml"
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p != config}


@pytest.mark.parametrize("log_setup", list(LOG_SETUPS))
async def test_no_secret_is_written_anywhere_but_where_it_is_handed_out(
    tmp_path: Path, fake: FakeVLLM, caplog: pytest.LogCaptureFixture, log_setup: str
) -> None:
    root = tmp_path / "gw"
    root.mkdir()
    ev = Evidence()
    ev.setting("[admin] secret_key", ADMIN_SECRET)
    ev.setting("the upstream's api_key", UPSTREAM_KEY)
    async with (
        serving(root, fake, LOG_SETUPS[log_setup]) as (process, url),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        run = Run(root, url, root / "admin.sock", http, ev)
        await use_keys(run)
        await administer(run)
        await drive_the_tui(run)
        await report(run)
        # The write-ahead log holds the newest pages only while the gateway runs.
        for path, data in written_under(root).items():
            ev.add(f"{path.relative_to(root)} while the gateway runs", data)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0

    written = written_under(root)
    assert root / "backup.db" in written
    for path, data in written.items():
        ev.add(f"{path.relative_to(root)} after the gateway stopped", data)
    # Every row, whatever the page layout.
    with contextlib.closing(sqlite3.connect(root / "llmgw.db")) as db, db:
        ev.add("database dump", "\n".join(db.iterdump()))
        audited = {row[0] for row in db.execute("SELECT action FROM audit_log")}
    ev.add("this test's own log capture (the TUI and admin client)", caplog.text)
    for request in fake.behaviour.requests:  # the client's credentials never go upstream
        sent = f"{request.path}?{request.query}\n{request.headers}\n".encode() + request.body
        ev.add(f"upstream saw {request.method} {request.path}", sent, {"the upstream's api_key"})

    assert ev.leaks() == []
    # The search would have found them: each key and token is in the answer that handed
    # it out, and the log, the database and the upstream's requests hold what they should.
    assert ev.not_handed_out() == []
    bob2 = ev.secrets["bob's new key"].needles[0]
    log = ev.piece("log/gw.log after the gateway stopped") + ev.piece(
        "stderr after the gateway stopped"
    )
    access_line = "key_prefix={}" if log_setup == "default-stderr" else '"key_prefix":"{}"'
    assert access_line.format(bob2[:16]).encode() in log
    assert b", 0 dropped" in log  # and the ledger was flushed whole on SIGTERM
    assert hash_key(bob2).encode() in ev.piece("database dump")
    assert {"key.create", "key.rotate", "key.revoke", "admin.create", "admin.password"} <= audited
    assert any(UPSTREAM_KEY in str(r.headers) for r in fake.behaviour.requests)


# --- a key where no key belongs: in the URL -----------------------------------------


@contextmanager
def logging_to(settings: LoggingSettings) -> Iterator[None]:
    """The gateway's own log set-up for one test; pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(settings)
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], root.level = handlers, level


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_key_pasted_into_the_url_path_is_cut_from_the_log(
    gateway: Gateway, tmp_path: Path, log_format: Literal["text", "json"]
) -> None:
    """The access line records the path; a key in it keeps only its display prefix."""
    key = (await gateway.create_key("alice"))["key"]
    log = tmp_path / "gateway.log"
    with logging_to(LoggingSettings(level="debug", format=log_format, file=str(log))):
        async with aiohttp.ClientSession() as http:
            for method, path, headers in (
                ("GET", f"/v1/models/{key}", {"Authorization": f"Bearer {key}"}),
                ("POST", f"/v1/chat/completions/{key}", {"Authorization": f"Bearer {key}"}),
                ("GET", f"/{key}", {}),
                ("GET", f"/admin/api/keys/{key}", {}),
            ):
                async with http.request(method, gateway.url + path, headers=headers) as resp:
                    assert resp.status in (401, 404)
        await gateway.flush_ledger()
    text = log.read_text()
    for part in (key, key[12:32], key[-20:]):
        assert part not in text
    access = [line for line in text.splitlines() if "llmgw.access" in line]
    assert len(access) == 4
    assert all(f"{key[:16]}[redacted]" in line for line in access)
    if log_format == "json":
        assert orjson.loads(access[0])["path"] == f"/v1/models/{key[:16]}[redacted]"
    await assert_settled(gateway, rows=0)


async def test_a_key_pasted_into_the_url_path_is_not_echoed_in_the_404(
    gateway: Gateway, api_key: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(
        f"{gateway.base_url}/models/{api_key}", headers={"Authorization": f"Bearer {api_key}"}
    ) as resp:
        body = await resp.read()
    assert resp.status == 404
    assert api_key[12:32].encode() not in body


async def test_a_key_in_the_query_string_never_goes_upstream(
    gateway: Gateway, api_key: str, fake: FakeVLLM, http: aiohttp.ClientSession
) -> None:
    for name in ("api_key", "api-key", "key"):
        async with http.post(
            f"{gateway.base_url}/chat/completions?{name}={api_key}",
            json={**CHAT, "max_tokens": 1},
            headers={"Authorization": f"Bearer {api_key}"},
        ) as resp:
            error = (await resp.json())["error"]
        # Refused, saying why: the query goes upstream as sent, into vLLM's access log.
        assert (resp.status, error["code"]) == (400, "api_key_in_url")
        assert api_key[12:32] not in error["message"]
    sent = [f"{r.path}?{r.query} {r.headers}".encode() + r.body for r in fake.behaviour.requests]
    assert not [s for s in sent if api_key[12:32].encode() in s]
