"""The route table is the one list of API routes: the README's API table says the same."""

from __future__ import annotations

import re
from pathlib import Path

from llmgw.routes import ROUTES

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_rows() -> set[tuple[str, str]]:
    """(method, path) of each row of the README's API table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## The API\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(GET|POST|PUT|DELETE) (/[^`\s]*)` \|", section, re.MULTILINE))


def test_every_route_is_in_the_readme_and_nothing_else_is() -> None:
    rows = readme_api_rows()
    table = {(route.method, route.path) for route in ROUTES}
    assert table <= rows, f"routes missing from the README's API table: {table - rows}"
    others = {(m, p) for m, p in rows - table if p not in ("/health", "/metrics")}
    assert not others, f"README rows that are no route of llmgw.routes: {others}"


def test_routes_are_unique() -> None:
    assert len({(r.method, r.path) for r in ROUTES}) == len(ROUTES)
