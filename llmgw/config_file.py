"""Settings as text: the commented `llmgw.toml` that `llmgw config init` writes (and
`llmgw.toml.example` is), and the effective settings `llmgw config check` shows.

The words come from the `help` metadata on the dataclass fields in `llmgw.config`;
this module only lays them out, so the documentation cannot drift from the code.
tomli-w writes values but no comments, so each key is dumped on its own and its help
is written above it.
"""

from __future__ import annotations

import dataclasses
import textwrap
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import tomli_w

from .config import CONFIG_SEARCH_PATH, Settings

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")

MASK = "***"
WIDTH = 88

_SEARCH = ", else ".join(str(p) if p.is_absolute() else f"./{p}" for p in CONFIG_SEARCH_PATH)
HEADER = (
    "llmgw.toml: every setting of the llmgw gateway, with its default.",
    f"llmgw reads the file named by --config or LLMGW_CONFIG, else {_SEARCH}. "
    "`llmgw config check` shows the settings the gateway would run with.",
    "Every value can also be set by environment variable LLMGW_<SECTION>_<KEY>, e.g. "
    "LLMGW_SERVER_PORT=8080, LLMGW_TIERS_GOLD_REQUESTS_PER_MINUTE=500 with "
    "LLMGW_TIERS_GOLD_REQUESTS_PER_HOUR=5000 (a new tier needs both), "
    "LLMGW_UPSTREAMS=http://gpu1:8100,http://gpu2:8100. The seed system's names work too: "
    "VLLM_BASE_URL, DATABASE_URL (sqlite:///PATH or postgresql://...), GATEWAY_PORT, "
    "ADMIN_SECRET_KEY, "
    "RATE_LIMIT_<TIER>_PER_MINUTE and RATE_LIMIT_<TIER>_PER_HOUR. The environment wins "
    "over this file.",
    "An unknown key or a bad value stops start-up with a message naming it.",
)


def render_config(
    settings: Settings | None = None,
    *,
    comments: bool = True,
    notes: Mapping[str, str] | None = None,
) -> str:
    """`settings` (default: the built-in ones) as TOML that `load_settings` reads back.

    With `comments`, a header and each setting's help come first; without, it is the
    plain listing `llmgw config check` prints. `notes` ("admin.socket": "default") end
    a setting's line as a comment. Secrets are written as they are: mask them first
    (`masked`) to show the result to anyone.
    """
    settings = Settings() if settings is None else settings
    notes = notes or {}
    blocks = ["\n".join(_header())] if comments else []
    for section in dataclasses.fields(Settings):
        for i, (header, table) in enumerate(_tables(section.name, getattr(settings, section.name))):
            lines = _comment(section.metadata["help"]) if comments and i == 0 else []
            lines.append(header)
            for f in dataclasses.fields(table):
                if comments:
                    lines += _comment(f.metadata["help"])
                line = tomli_w.dumps({f.name: getattr(table, f.name)}).rstrip("\n")
                note = notes.get(f"{section.name}.{f.name}")
                lines.append(f"{line}  # {note}" if note else line)
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def masked(settings: Settings) -> Settings:
    """`settings` with every secret that is set replaced by "***", so it can be shown."""
    changes: dict[str, Any] = {}
    for section in dataclasses.fields(Settings):
        value = getattr(settings, section.name)
        if isinstance(value, tuple):
            changes[section.name] = tuple(_mask(item) for item in value)
        elif isinstance(value, Mapping):
            changes[section.name] = types.MappingProxyType({k: _mask(v) for k, v in value.items()})
        else:
            changes[section.name] = _mask(value)
    return dataclasses.replace(settings, **changes)


def settings_dict(settings: Settings) -> dict[str, Any]:
    """`settings` as plain data in the shape of `llmgw.toml`, for JSON."""
    return {
        section.name: _plain(getattr(settings, section.name))
        for section in dataclasses.fields(Settings)
    }


def _tables(name: str, value: Any) -> list[tuple[str, Any]]:
    """The TOML tables of one section, each with its header line."""
    if isinstance(value, tuple):  # an array of tables: [[upstreams]]
        return [(f"[[{name}]]", item) for item in value]
    if isinstance(value, Mapping):  # named tables: [tiers.NAME], quoted by tomli-w if need be
        return [(tomli_w.dumps({name: {key: {}}}).strip(), item) for key, item in value.items()]
    return [(f"[{name}]", value)]


def _header() -> list[str]:
    lines: list[str] = []
    for paragraph in HEADER:
        lines += ["#"] if lines else []
        lines += _comment(paragraph)
    return lines


def _comment(text: str) -> list[str]:
    # Whole words only: a URL or a variable name split over two lines cannot be copied.
    lines = textwrap.wrap(text, WIDTH - 2, break_long_words=False, break_on_hyphens=False)
    return [f"# {line}" for line in lines]


def _mask(table: D) -> D:
    hidden = {
        f.name: MASK
        for f in dataclasses.fields(table)
        if f.metadata.get("secret") and getattr(table, f.name)
    }
    return dataclasses.replace(table, **hidden) if hidden else table


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value
