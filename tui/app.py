"""`llmgw-tui`: the admin dashboard (Textual). Not built yet: it comes with issue 4."""

from __future__ import annotations

import sys


def main() -> None:
    print(
        "llmgw-tui is not available in this version yet; use `llmgw key list` meanwhile.",
        file=sys.stderr,
    )
    sys.exit(1)
