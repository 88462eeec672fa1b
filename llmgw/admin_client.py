"""`AdminClient`: how the CLI and the TUI talk to a running gateway.

Through the admin Unix socket (no login; the gateway checks the caller's uid), or,
given a URL and a token, through `/admin/api` on a remote gateway's public port: the
same routes either way. It is the only way in for `cli/` and `tui/`: neither opens the
database. What it returns is typed (`llmgw.api_types`): the gateway's handlers build
the same types, so the two sides are checked against one definition.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import aiohttp
import orjson

from .api_types import (
    AdminView,
    AuditEntry,
    CreatedKey,
    DeletedKey,
    Health,
    KeyDetail,
    KeyView,
    LoginToken,
    PruneResult,
    RequestRow,
    Stats,
    Tiers,
    UsageReport,
    UserBudget,
)


class GatewayUnreachable(Exception):
    """No gateway answers; the message says what to check."""


class AdminApiError(Exception):
    """The gateway refused the request; `message` is its explanation, `param` the
    field it objected to, if any."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


class AdminClient:
    def __init__(
        self,
        socket_path: Path | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if (socket_path is None) == (url is None):
            raise ValueError("give either a socket path or a URL")
        self.where = str(socket_path) if socket_path else str(url)
        self._socket = socket_path
        self._base = f"{url.rstrip('/')}/admin/api" if url else "http://llmgw"
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        connector = aiohttp.UnixConnector(path=str(self._socket)) if self._socket else None
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers=self._headers,
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- gateway --------------------------------------------------------------------

    async def health(self) -> Health:
        # /health answers 503 with a full body when the gateway cannot serve.
        return cast(Health, await self._json("GET", "/health", ok=(200, 503)))

    async def usage(self, days: int = 7, by: str = "user") -> UsageReport:
        params = {"days": days, "by": by}
        return cast(UsageReport, await self._json("GET", "/usage", params=params))

    async def stats(self, seconds: int = 300) -> Stats:
        return cast(Stats, await self._json("GET", "/stats", params={"seconds": seconds}))

    async def stream_stats(self, seconds: int = 60) -> AsyncIterator[Stats]:
        """One snapshot a second from `/stats/stream`, until the gateway goes away."""
        session = self._open()
        try:
            async with session.get(
                self._base + "/stats/stream",
                params={"seconds": seconds},
                timeout=aiohttp.ClientTimeout(total=None, sock_read=10),
            ) as resp:
                if resp.status != 200:
                    raise _api_error(resp.status, await resp.read())
                async for line in resp.content:
                    if line.startswith(b"data: "):
                        yield cast(Stats, orjson.loads(line[6:]))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from None

    async def requests(
        self,
        *,
        limit: int = 100,
        after_id: int = 0,
        user_id: str | None = None,
        status: str | None = None,
    ) -> list[RequestRow]:
        """The newest ledger rows, newest first; `status` is 429, 4xx or error (400 and
        up except 429)."""
        params: dict[str, Any] = {"limit": limit, "after_id": after_id}
        params |= {k: v for k, v in (("user_id", user_id), ("status", status)) if v}
        return cast(list[RequestRow], await self._list("/requests", params))

    # --- keys -----------------------------------------------------------------------

    async def create_key(self, user_id: str, **fields: Any) -> CreatedKey:
        body = {"user_id": user_id} | {k: v for k, v in fields.items() if v is not None}
        return cast(CreatedKey, await self._json("POST", "/keys", json=body))

    async def list_keys(self, **filters: Any) -> list[KeyView]:
        params = {
            k: str(v).lower() if isinstance(v, bool) else v
            for k, v in filters.items()
            if v is not None
        }
        return cast(list[KeyView], await self._list("/keys", params))

    async def get_key(self, key_id: int) -> KeyDetail:
        """The key, and each of its limits with what is left of it now."""
        return cast(KeyDetail, await self._json("GET", f"/keys/{key_id}"))

    async def update_key(self, key_id: int, changes: Mapping[str, Any]) -> KeyView:
        return cast(KeyView, await self._json("PUT", f"/keys/{key_id}", json=dict(changes)))

    async def revoke_key(self, key_id: int) -> KeyView:
        return cast(KeyView, await self._json("POST", f"/keys/{key_id}/revoke"))

    async def rotate_key(self, key_id: int) -> CreatedKey:
        return cast(CreatedKey, await self._json("POST", f"/keys/{key_id}/rotate"))

    async def delete_key(self, key_id: int) -> DeletedKey:
        return cast(DeletedKey, await self._json("DELETE", f"/keys/{key_id}"))

    async def tiers(self) -> Tiers:
        return cast(Tiers, await self._json("GET", "/tiers"))

    # --- user budgets -----------------------------------------------------------------

    async def user_budgets(self) -> list[UserBudget]:
        return cast(list[UserBudget], await self._list("/budgets"))

    async def user_budget(self, user_id: str) -> UserBudget:
        """The user's budget; `AdminApiError` 404 if the user has none."""
        return cast(UserBudget, await self._json("GET", _budget_path(user_id)))

    async def set_user_budget(
        self, user_id: str, budget_tokens: int, budget_period: str = "month"
    ) -> UserBudget:
        body = {"budget_tokens": budget_tokens, "budget_period": budget_period}
        return cast(UserBudget, await self._json("PUT", _budget_path(user_id), json=body))

    async def clear_user_budget(self, user_id: str) -> UserBudget:
        """Remove the user's budget; the budget removed (`AdminApiError` 404 if none)."""
        return cast(UserBudget, await self._json("DELETE", _budget_path(user_id)))

    # --- admin users, audit, database -------------------------------------------------

    async def login(self, username: str, password: str) -> LoginToken:
        body = {"username": username, "password": password}
        return cast(LoginToken, await self._json("POST", "/login", json=body))

    async def list_admins(self) -> list[AdminView]:
        return cast(list[AdminView], await self._list("/admins"))

    async def add_admin(self, username: str, password: str, email: str | None = None) -> AdminView:
        body = {"username": username, "password": password, "email": email}
        body = {k: v for k, v in body.items() if v}
        return cast(AdminView, await self._json("POST", "/admins", json=body))

    async def update_admin(self, username: str, **changes: Any) -> AdminView:
        return cast(AdminView, await self._json("PUT", f"/admins/{username}", json=changes))

    async def audit(self, limit: int = 100, action: str | None = None) -> list[AuditEntry]:
        params: dict[str, Any] = {"limit": limit} | ({"action": action} if action else {})
        return cast(list[AuditEntry], await self._list("/audit", params))

    async def prune(self, older_than_days: int) -> PruneResult:
        body = {"older_than_days": older_than_days}
        return cast(PruneResult, await self._json("POST", "/db/prune", json=body))

    async def backup(self, target: Path) -> int:
        """Stream an online backup of the gateway's database into `target`; its size."""
        session = self._open()
        size = 0
        try:
            async with session.get(
                self._base + "/db/backup", timeout=aiohttp.ClientTimeout(total=None)
            ) as resp:
                if resp.status != 200:
                    raise _api_error(resp.status, await resp.read())
                with target.open("wb") as file:
                    async for chunk in resp.content.iter_chunked(256 * 1024):
                        file.write(chunk)
                        size += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from None
        return size

    # --- plumbing ---------------------------------------------------------------------

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use AdminClient as an async context manager")
        return self._session

    async def _json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> dict[str, Any]:
        session = self._open()
        try:
            async with session.request(method, self._base + path, json=json, params=params) as resp:
                data, status = await resp.read(), resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable(exc) from None
        if status not in ok:
            raise _api_error(status, data)
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise GatewayUnreachable(
                f"{self.where} answered, but not like an llmgw gateway (status {status})"
            )
        return parsed

    async def _list(
        self, path: str, params: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = (await self._json("GET", path, params=params))["data"]
        return data

    def _unreachable(self, exc: BaseException) -> GatewayUnreachable:
        os_error = getattr(exc, "os_error", None)
        if isinstance(os_error, PermissionError):
            return GatewayUnreachable(
                f"permission denied on {self.where}: run as the gateway's user or root, "
                "or ask for your uid in [admin] allowed_uids"
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            if self._socket:
                return GatewayUnreachable(
                    f"no gateway is running at {self.where}: start it with `llmgw serve`, "
                    "or point --socket / LLMGW_ADMIN_SOCKET at its admin socket"
                )
            return GatewayUnreachable(f"cannot connect to {self.where}: {exc.os_error}")
        return GatewayUnreachable(
            f"the gateway at {self.where} did not answer properly: {exc or 'timeout'}"
        )


def _budget_path(user_id: str) -> str:
    # A user id is any text: quoted, so that a '/' or '?' in it stays part of it.
    return f"/users/{urllib.parse.quote(user_id, safe='')}/budget"


def _api_error(status: int, data: bytes) -> AdminApiError:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        param = error.get("param")
        return AdminApiError(status, error["message"], param if isinstance(param, str) else None)
    return AdminApiError(status, f"the gateway answered with status {status}")
