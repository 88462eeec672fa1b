"""`AdminClient`: how the CLI and the TUI talk to a running gateway.

Through the admin Unix socket (no login; the gateway checks the caller's uid). It is
the only way in for `cli/` and `tui/`: neither opens the database.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import orjson


class GatewayUnreachable(Exception):
    """No gateway answers at the socket; the message says what to check."""


class AdminApiError(Exception):
    """The gateway refused the request; `message` is its explanation."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminClient:
    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AdminClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket_path)),
            timeout=self._timeout,
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

    async def health(self) -> dict[str, Any]:
        # /health answers 503 with a full body when the gateway cannot serve.
        result: dict[str, Any] = await self._request("GET", "/health", ok=(200, 503))
        return result

    async def create_key(
        self,
        user_id: str,
        *,
        tier: str | None = None,
        description: str | None = None,
        expires_at: str | None = None,
        allowed_models: list[str] | None = None,
    ) -> dict[str, Any]:
        body = {
            "user_id": user_id,
            "tier": tier,
            "description": description,
            "expires_at": expires_at,
            "allowed_models": allowed_models,
        }
        result: dict[str, Any] = await self._request("POST", "/keys", json=body)
        return result

    async def list_keys(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._request("GET", "/keys"))["data"]
        return result

    async def get_key(self, key_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/keys/{key_id}")
        return result

    async def revoke_key(self, key_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", f"/keys/{key_id}/revoke")
        return result

    async def _request(
        self, method: str, path: str, *, json: Any = None, ok: tuple[int, ...] = (200, 201)
    ) -> Any:
        if self._session is None:
            raise RuntimeError("use AdminClient as an async context manager")
        try:
            async with self._session.request(method, f"http://llmgw{path}", json=json) as resp:
                data = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorError as exc:
            raise GatewayUnreachable(self._unreachable(exc)) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GatewayUnreachable(
                f"the gateway at {self.socket_path} did not answer properly: {exc or 'timeout'}"
            ) from None
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if status not in ok:
            raise AdminApiError(status, _error_message(parsed, status))
        return parsed

    def _unreachable(self, exc: aiohttp.ClientConnectorError) -> str:
        os_error = exc.os_error
        if isinstance(os_error, PermissionError):
            return (
                f"permission denied on {self.socket_path}: run as the gateway's user or root, "
                "or ask for your uid in [admin] allowed_uids"
            )
        return (
            f"no gateway is running at {self.socket_path}: start it with `llmgw serve`, "
            "or point --socket / LLMGW_ADMIN_SOCKET at its admin socket"
        )


def _error_message(parsed: Any, status: int) -> str:
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return f"the gateway answered with status {status}"
