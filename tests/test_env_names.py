"""No `LLMGW_…` variable the tests, the benchmark or the scripts read is one `llmgw`
would refuse.

`llmgw.config` takes every `LLMGW_…` name in the environment for a setting (but the few
in `NON_SETTING_ENV`), and stops at one it does not know. A switch for the tests named
that way, exported in a developer's shell, would make `llmgw key list` fail with
"unknown setting". The tests' switches are pytest options (`tests/conftest.py`); the
scripts' own variables are named after the script.
"""

from __future__ import annotations

import re
from pathlib import Path

from llmgw.config import NON_SETTING_ENV, ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("tests", "bench", "scripts", "integration", ".ci")

# A name read from the environment: os.environ.get("X"), os.environ["X"], os.getenv("X")
# in Python; $X and ${X…} in shell (and in the Markdown that documents a script).
_READ = re.compile(
    r"""(?:environ(?:\.get\(|\[)|getenv\()\s*["'](?P<py>LLMGW_[A-Z0-9_]+)["']"""
    r"""|\$\{?(?P<sh>LLMGW_[A-Z0-9_]+)"""
)


def names_read(text: str) -> set[str]:
    return {m["py"] or m["sh"] for m in _READ.finditer(text)}


def refusal(name: str) -> str | None:
    """`llmgw`'s "unknown setting" error for `name` in the environment; None if it is a
    setting (whatever value it wants) or not one `llmgw` reads as a setting."""
    if name in NON_SETTING_ENV:
        return None
    try:
        load_settings(None, {name: "1"})
    except ConfigError as exc:
        return str(exc) if "unknown setting" in str(exc) else None
    return None


def test_the_scan_finds_a_name_however_it_is_read() -> None:
    code = """
a = float(os.environ.get("LLMGW_A", "60"))
b = os.environ['LLMGW_B']
c = os.getenv("LLMGW_C")
home="${LLMGW_D:-$HOME/.cache}"  # shell
echo "$LLMGW_E"
clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMGW_")}
monkeypatch.setenv("LLMGW_SET", "1"); params = {"LLMGW_DATA": "1"}
"""
    assert names_read(code) == {"LLMGW_A", "LLMGW_B", "LLMGW_C", "LLMGW_D", "LLMGW_E"}


def test_what_the_refusal_check_tells_apart() -> None:
    assert refusal("LLMGW_SERVER_PORT") is None
    assert refusal("LLMGW_TIERS_GOLD_REQUESTS_PER_MINUTE") is None  # refused, but a setting
    assert refusal("LLMGW_URL") is None  # steers the CLI
    assert refusal("LLMGW_SOAK_SECONDS") == "LLMGW_SOAK_SECONDS: unknown setting"


def test_no_name_the_tests_bench_or_scripts_read_is_refused_by_llmgw() -> None:
    this = Path(__file__).resolve()  # its examples above are not reads
    read: dict[str, set[str]] = {}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path == this or not path.is_file() or "__pycache__" in path.parts:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            for name in names_read(text):
                read.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    refused = {name: sorted(files) for name, files in read.items() if refusal(name)}
    assert refused == {}, "read as test/script switches, but llmgw takes them for settings"
