"""The usage ledger into PostgreSQL: rows committed a second, and what the writer costs
the event loop.

`ledger_bench`'s two runs (saturated; offered at `--rate`), with
`PostgresStore.insert_request_logs` as the writer, on a throwaway PostgreSQL cluster of
its own (initdb in a temporary directory, a server on a free loopback port, removed at
the end; as root, run as the `postgres` user). asyncpg encodes each batch's arrays on
the event loop, so the loop's lateness (a 1 ms ticker) is reported beside the rows a
second. The server runs with its defaults (fsync on), as a real one would.

Prints one JSON object.
    cd bench && ../.venv/bin/python -m gwbench.pg_ledger_bench [--seconds 8] [--rate 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import uvloop

from llmgw.store import PostgresStore

from .ledger_bench import measure

USER = "postgres"  # the server's user when the bench runs as root


def _binary(name: str) -> str:
    found = shutil.which(name) or max(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), default="")
    if not found:
        raise SystemExit(f"{name} not found: apt-get install postgresql")
    return found


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    """A running PostgreSQL server of its own; the URL of its `postgres` database."""
    root = Path(tempfile.mkdtemp(prefix="llmgw-bench-pg-"))
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", USER, "--"] if as_root else []
    user = USER if as_root else pwd.getpwuid(os.geteuid()).pw_name
    if as_root:
        account = pwd.getpwnam(USER)
        os.chown(root, account.pw_uid, account.pw_gid)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = root / "data"
    try:
        subprocess.run(
            [*prefix, _binary("initdb"), "-D", str(data), "-A", "trust", "-U", user,
             "-E", "UTF8", "--no-locale"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [*prefix, _binary("pg_ctl"), "start", "-D", str(data), "-l", str(root / "log"),
             "-w", "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
        yield f"postgresql://{user}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, _binary("pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"],
            check=False, capture_output=True,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


async def run(
    url: str, name: str, seconds: float, max_rows: int, rate: float | None, backlog: int
) -> Any:
    admin = await asyncpg.connect(url)
    await admin.execute(f"CREATE DATABASE {name}")
    database = url.rpartition("/")[0] + f"/{name}"
    store = await PostgresStore.open(database)
    result = await measure(store, seconds, max_rows, rate, backlog)
    await store.close()
    connection = await asyncpg.connect(database)
    rows = await connection.fetchval("SELECT count(*) FROM request_logs")
    await connection.close()
    await admin.close()
    all_committed = rows == result["appended"] and result["dropped"] == 0
    return result | {"committed": rows, "all_committed": all_committed}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with cluster() as url:
        saturated = await run(url, "saturated", args.seconds, args.max_rows, None, args.backlog)
        offered = await run(url, "offered", args.seconds, args.max_rows, args.rate, args.backlog)
    return {"saturated": saturated, "offered": offered, "rate": args.rate}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--max-rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=20_000)
    parser.add_argument("--backlog", type=int, default=5_000)
    print(orjson.dumps(uvloop.run(main(parser.parse_args()))).decode(), flush=True)
