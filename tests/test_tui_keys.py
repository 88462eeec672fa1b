"""The TUI's keys tab, driven by key presses against a real gateway: create a key and
use it with the OpenAI SDK, search, sort, edit, revoke, rotate, delete; and the look."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from textual.app import App
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import (
    Button,
    DataTable,
    Input,
    Label,
    Select,
    Static,
    Switch,
    TabbedContent,
)
from textual.widgets.data_table import ColumnKey
from textual.worker import WorkerFailed, WorkerState

from llmgw.api_types import CreatedKey, KeyView, Tiers, TierView
from tui.app import LlmgwTui
from tui.confirm import ConfirmScreen
from tui.key_form import KeyFormScreen, TiersLoaded
from tui.keys import KeysLoaded, KeysPane, rotated
from tui.limit_fields import LimitName, describe_limits
from tui.new_key import NewKeyScreen

from .conftest import Gateway

LIMIT_FIELDS: tuple[LimitName | Literal["budget_period"], ...] = (
    "requests_per_minute",
    "requests_per_hour",
    "tokens_per_minute",
    "tokens_per_day",
    "max_in_flight",
    "budget_tokens",
    "budget_period",
)
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "hello from the keys tab"}
]


async def until(pilot: Pilot[None], condition: Callable[[], bool], seconds: float = 10) -> None:
    """Let the app's workers finish and their messages land until `condition` holds.

    Never waits on the app's own `/stats/stream` worker: it runs as long as the app.
    """
    app = pilot.app
    async with asyncio.timeout(seconds):
        while not condition():
            running = [
                w for w in app.workers if w.group != "stats" and w.state is WorkerState.RUNNING
            ]
            # An empty list would mean "every worker" to wait_for_complete; a failed
            # worker is the app's to report (a notice), and tests look for that.
            with contextlib.suppress(WorkerFailed):
                if running:
                    await app.workers.wait_for_complete(running)
            await pilot.pause()


async def open_keys_tab(pilot: Pilot[None], keys: int) -> KeysPane:
    """Connect, show the keys tab, and wait until its table lists `keys` keys."""
    app = pilot.app
    assert isinstance(app, LlmgwTui)
    await until(pilot, lambda: app.connected is True)
    await pilot.press("k")
    await until(pilot, lambda: table(app).row_count == keys)
    return app.query_one(KeysPane)


def table(app: App[Any]) -> DataTable[Any]:
    return app.query_one("#keys-table", DataTable)


def focused(app: App[Any]) -> Widget | None:
    """`app.focused`, read afresh: mypy would carry an earlier assert's narrowing of the
    property past the key presses that move the focus."""
    return app.focused


def column(app: Any, name: str) -> list[str]:
    return [str(cell) for cell in table(app).get_column(name)]


def row_of(app: Any, key_id: int) -> dict[str, str]:
    cells = table(app).get_row(str(key_id))
    names = [str(c.key.value) for c in table(app).ordered_columns]
    return dict(zip(names, map(str, cells), strict=True))


async def select_key(pilot: Pilot[None], key_id: int) -> None:
    """Put the cursor on the key's row, as the arrow keys would."""
    grid = table(pilot.app)
    target = grid.get_row_index(str(key_id))
    while grid.cursor_row != target:
        await pilot.press("down" if grid.cursor_row < target else "up")


async def chat(gateway: Gateway, key: str) -> str | None:
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, max_retries=0) as sdk:
        reply = await sdk.chat.completions.create(
            model="fake-model", messages=MESSAGES, max_tokens=2
        )
    return reply.choices[0].message.content


async def listed(gateway: Gateway) -> list[KeyView]:
    async with gateway.admin() as admin:
        return await admin.list_keys()


def form(app: Any) -> KeyFormScreen:
    assert isinstance(app.screen, KeyFormScreen)
    return app.screen


# --- with a real gateway --------------------------------------------------------------


async def test_create_a_key_use_it_and_revoke_it(gateway: Gateway) -> None:
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=0)
        await pilot.press("n")
        tier = form(app).query_one("#tier", Select)
        await until(pilot, lambda: tier.value == "free")  # the gateway's default tier
        await pilot.press(*"alice")  # the user field has the focus
        form(app).query_one("#description", Input).value = "notebook"
        form(app).query_one("#allowed_models", Input).value = "fake-model"
        await pilot.click("#save")
        await until(pilot, lambda: isinstance(app.screen, NewKeyScreen))

        shown = app.screen
        assert isinstance(shown, NewKeyScreen)
        key = shown.secret
        assert key.startswith("sk-internal-")
        assert key in str(shown.query_one("#secret", Static).render())
        assert "Copy it now: you will not see it again." in str(
            shown.query_one("#warning", Static).render()
        )
        await pilot.press("c")
        assert app.clipboard == key
        assert any(n.message == "Copied" for n in app._notifications)
        await pilot.press("escape")

        [created] = await listed(gateway)
        await until(pilot, lambda: table(app).row_count == 1)
        row = row_of(app, created["id"])
        assert (row["key_prefix"], row["user_id"], row["tier"]) == (key[:16], "alice", "free")
        assert (row["is_active"], row["description"]) == ("yes", "notebook")
        cells = [str(c) for r in table(app).rows for c in table(app).get_row(r)]
        assert not any(key in c for c in cells)  # the table never shows a secret
        assert await chat(gateway, key)

        await select_key(pilot, created["id"])
        await pilot.press("v")
        confirm = app.screen
        assert isinstance(confirm, ConfirmScreen)
        question = str(confirm.query_one("Label").render())
        assert f"Revoke key {created['id']} ({key[:16]}, alice)?" in question
        await pilot.press("y")
        await until(pilot, lambda: row_of(app, created["id"])["is_active"] == "no")
        with pytest.raises(openai.AuthenticationError):
            await chat(gateway, key)


async def test_a_refused_field_is_shown_by_it_and_the_form_stays(gateway: Gateway) -> None:
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=0)
        await pilot.press("n")
        await pilot.press(*"bob")
        expiry = form(app).query_one("#expires_at", Input)
        expiry.value = "someday"
        await pilot.press("ctrl+s")
        note = form(app).query_one("#expires_at-note", Static)
        await until(pilot, lambda: note.has_class("-error"))
        assert "'expires_at'" in str(note.render())
        assert "someday" in str(note.render())
        assert app.focused is expiry
        assert not form(app).query_one("#save", Button).disabled
        assert await listed(gateway) == []

        expiry.value = "30d"  # fixed, the same form goes through
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, NewKeyScreen))
        [created] = await listed(gateway)
        assert created["user_id"] == "bob" and created["expires_at"] is not None


async def test_search_filters_the_rows(gateway: Gateway) -> None:
    alice = await gateway.create_key("alice", description="laptop")
    bob = await gateway.create_key("bob", tier="premium", description="ci runner")
    await gateway.create_key("carol", description="notebook")
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=3)
        await pilot.press("slash", *"premium")
        assert column(app, "user_id") == ["bob"]
        search = app.query_one("#keys-search", Input)
        search.value = "ci RUNNER"  # every word, any case
        await pilot.pause()
        assert column(app, "user_id") == ["bob"]
        search.value = alice["key_prefix"]
        await pilot.pause()
        assert column(app, "user_id") == ["alice"]
        search.value = "nobody"
        await pilot.pause()
        assert table(app).row_count == 0
        assert "No key matches 'nobody'" in str(app.query_one("#keys-status", Static).render())
        search.value = ""
        await pilot.press("enter")  # back to the table, all keys again
        assert app.focused is table(app)
        assert table(app).row_count == 3
        await select_key(pilot, bob["id"])
        await pilot.press("slash", "b")  # may also match a random key prefix: not the point
        cursor = table(app).coordinate_to_cell_key(table(app).cursor_coordinate)
        assert cursor.row_key.value == str(bob["id"])  # the cursor stayed on bob


async def test_escape_leaves_the_search_and_the_keys_act_again(gateway: Gateway) -> None:
    alice = await gateway.create_key("alice")
    await gateway.create_key("bob")
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_keys_tab(pilot, keys=2)
        search = app.query_one("#keys-search", Input)
        await pilot.press("slash", *"alice", "escape")
        assert app.focused is table(app)
        assert search.value == "alice"  # the filter stays, as after enter
        assert column(app, "user_id") == ["alice"]
        await pilot.press("v")  # a key, not a letter of the search
        assert search.value == "alice"
        assert isinstance(app.screen, ConfirmScreen)
        assert f"Revoke key {alice['id']} (" in str(app.screen.query_one(Label).render())


async def test_sort_by_the_cursor_column_toggles(gateway: Gateway) -> None:
    for user in ("bob", "Carol", "alice"):
        await gateway.create_key(user)
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=3)
        assert column(app, "user_id") == ["bob", "Carol", "alice"]  # by id
        await pilot.press("right", "right", "s")  # the user column
        assert column(app, "user_id") == ["alice", "bob", "Carol"]
        assert str(table(app).columns[ColumnKey("user_id")].label) == "user ▲"
        await pilot.press("s")
        assert column(app, "user_id") == ["Carol", "bob", "alice"]
        assert str(table(app).columns[ColumnKey("user_id")].label) == "user ▼"
        assert table(app).cursor_column == 2  # the cursor stays in the sorted column

        # The mouse: a click on a header sorts by that column.
        grid = table(app)
        x = sum(c.get_render_width(grid) for c in grid.ordered_columns[:1]) + 1
        await pilot.click(grid, offset=(x, 0))  # "prefix"
        await pilot.pause()
        prefixes = column(app, "key_prefix")
        assert prefixes == sorted(prefixes, key=str.casefold)
        assert str(grid.columns[ColumnKey("key_prefix")].label) == "prefix ▲"


async def test_edit_moves_a_key_to_another_tier(gateway: Gateway) -> None:
    await gateway.create_key("alice")
    created = await gateway.create_key("bob", description="old")
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=2)
        await select_key(pilot, created["id"])
        await pilot.press("e")
        tier = form(app).query_one("#tier", Select)
        await until(pilot, lambda: tier.value == "free")  # the key's own tier
        assert form(app).query_one("#description", Input).value == "old"
        tier.value = "premium"
        form(app).query_one("#requests_per_minute", Input).value = "7"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: row_of(app, created["id"])["tier"] == "premium")
        async with gateway.admin() as admin:
            after = await admin.get_key(created["id"])
        assert (after["tier"], after["requests_per_minute"]) == ("premium", 7)
        assert after["description"] == "old"  # unchanged fields are not sent


def fill(app: Any, **texts: str) -> None:
    """Type into the form's fields: name -> text."""
    for name, text in texts.items():
        form(app).query_one(f"#{name}", Input).value = text


def refusals(screen: KeyFormScreen) -> list[str]:
    """What the form says is wrong (its notes in error)."""
    return [str(note.render()) for note in screen.query(".note.-error").results(Static)]


# Needs issue 15's server side: POST/PUT /keys taking the new limits and GET /keys/{id}
# showing them.
async def test_a_key_made_with_every_limit_has_them(gateway: Gateway) -> None:
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=0)
        await pilot.press("n")
        tier = form(app).query_one("#tier", Select)
        await until(pilot, lambda: tier.value == "free")
        await pilot.press(*"carol")
        fill(
            app,
            requests_per_minute="6",
            requests_per_hour="",  # the tier's
            tokens_per_minute="1,500",
            tokens_per_day="0",  # no daily limit for this key, whatever the tier says
            max_in_flight="2",
            budget_tokens="250_000",
        )
        form(app).query_one("#budget_period", Select).value = "week"
        screen = form(app)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, NewKeyScreen) or bool(refusals(screen)))
        assert not refusals(screen)
        await pilot.press("escape")
        [created] = await listed(gateway)
        async with gateway.admin() as admin:
            key = await admin.get_key(created["id"])
        assert {k: v for k, v in key.items() if k in LIMIT_FIELDS} == {
            "requests_per_minute": 6,
            "requests_per_hour": None,
            "tokens_per_minute": 1500,
            "tokens_per_day": 0,
            "max_in_flight": 2,
            "budget_tokens": 250_000,
            "budget_period": "week",
        }
        await until(pilot, lambda: table(app).row_count == 1)
        shown = str(app.query_one("#key-limits", Static).render())
        assert shown == (
            "limits: requests/min 6 · tokens/min 1,500 · tokens/day unlimited · in flight 2"
            " · budget 250,000 tokens a week; the rest as tier free"
        )


# Needs issue 15's server side, as above.
async def test_edit_sets_and_clears_the_limits(gateway: Gateway) -> None:
    created = await gateway.create_key("dave", tokens_per_minute=900, budget_tokens=10_000)
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=1)
        await pilot.press("e")
        assert form(app).query_one("#tokens_per_minute", Input).value == "900"
        fill(app, tokens_per_minute="", max_in_flight="3", budget_tokens="0")
        screen = form(app)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.screen is not screen or bool(refusals(screen)))
        assert not refusals(screen)
        async with gateway.admin() as admin:
            after = await admin.get_key(created["id"])
        changed: tuple[LimitName, ...] = ("tokens_per_minute", "max_in_flight", "budget_tokens")
        assert [after[name] for name in changed] == [None, 3, 0]


async def test_rotate_shows_a_new_secret_and_the_old_one_stops(gateway: Gateway) -> None:
    created = await gateway.create_key("alice")
    old = created["key"]
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=1)
        await pilot.press("o")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, NewKeyScreen))
        assert isinstance(app.screen, NewKeyScreen)
        new = app.screen.secret
        assert new != old and new.startswith("sk-internal-")
        await pilot.press("escape")
        await until(pilot, lambda: row_of(app, created["id"])["key_prefix"] == new[:16])
        assert await chat(gateway, new)
        with pytest.raises(openai.AuthenticationError):
            await chat(gateway, old)


async def test_rotating_a_revoked_key_says_it_is_still_revoked(gateway: Gateway) -> None:
    created = await gateway.create_key("alice")
    async with gateway.admin() as admin:
        await admin.revoke_key(created["id"])
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_keys_tab(pilot, keys=1)
        await pilot.press("o", "y")
        await until(pilot, lambda: isinstance(app.screen, NewKeyScreen))
        heading = app.screen.query_one("#heading", Label)
        text = str(heading.render())
        assert "the old one no longer works." in text
        assert text.endswith(
            "The key is still revoked: edit it (e) and switch it to active to use it."
        )
        # Wrapped inside the box, not cut by its edge.
        box = app.screen.query_one("NewKeyScreen > Vertical")
        assert heading.outer_size.width <= box.content_size.width
        assert heading.outer_size.height > 1


async def test_the_edit_form_lets_a_revoked_key_in_again(gateway: Gateway) -> None:
    created = await gateway.create_key("alice")
    async with gateway.admin() as admin:
        await admin.revoke_key(created["id"])
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=1)
        await pilot.press("e")
        switch = form(app).query_one("#is_active", Switch)
        state = form(app).query_one("#is_active-state", Label)
        assert switch.value is False
        assert str(state.render()).startswith("revoked")
        await pilot.press("shift+tab", "shift+tab")  # from the description, past the tier
        assert app.focused is switch
        await pilot.press("space")
        assert str(state.render()) == "active"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: row_of(app, created["id"])["is_active"] == "yes")
        assert any(n.message.endswith("alice): active.") for n in app._notifications)
        assert await chat(gateway, created["key"])

        await pilot.press("e")  # and off again: the same as revoking
        await pilot.click("#is_active")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: row_of(app, created["id"])["is_active"] == "no")
        with pytest.raises(openai.AuthenticationError):
            await chat(gateway, created["key"])


async def test_a_new_key_has_no_status_switch(gateway: Gateway) -> None:
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=0)
        await pilot.press("n")
        assert not form(app).query(Switch)  # a new key is active; the API takes no status


async def test_a_confirmation_shows_a_user_id_as_it_is(gateway: Gateway) -> None:
    created = await gateway.create_key("team[ops]")
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_keys_tab(pilot, keys=1)
        for action in ("v", "x", "o"):
            await pilot.press(action)
            assert isinstance(app.screen, ConfirmScreen)
            question = str(app.screen.query_one(Label).render())
            assert f"key {created['id']} ({created['key_prefix']}, team[ops])" in question
            assert "\\" not in question
            await pilot.press("n")


async def test_delete_removes_the_row(gateway: Gateway) -> None:
    keep = await gateway.create_key("alice")
    gone = await gateway.create_key("bob")
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=2)
        await select_key(pilot, gone["id"])
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: table(app).row_count == 1)
        assert column(app, "id") == [str(keep["id"])]
        assert [k["id"] for k in await listed(gateway)] == [keep["id"]]


async def test_cancelling_a_confirmation_changes_nothing(gateway: Gateway) -> None:
    created = await gateway.create_key("alice")
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=1)
        for action, answer in (("v", "n"), ("o", "escape"), ("x", "n")):
            await pilot.press(action)
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press(answer)
            await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert await listed(gateway) == [{k: v for k, v in created.items() if k != "key"}]
        assert table(app).row_count == 1
        assert await chat(gateway, created["key"])


async def test_a_refusal_is_shown_and_the_table_catches_up(gateway: Gateway) -> None:
    """A key deleted by someone else meanwhile: the gateway's 404 becomes a notice."""
    created = await gateway.create_key("alice")
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_keys_tab(pilot, keys=1)
        async with gateway.admin() as admin:
            await admin.delete_key(created["id"])
        await pilot.press("v", "y")
        await until(pilot, lambda: bool(app._notifications))
        [notice] = app._notifications
        assert notice.severity == "error"
        assert notice.message == f"No API key with id {created['id']}."
        await pilot.press("r")
        await until(pilot, lambda: table(app).row_count == 0)


async def test_the_table_catches_up_every_ten_ticks(gateway: Gateway) -> None:
    app = LlmgwTui(gateway.socket_path)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await open_keys_tab(pilot, keys=0)
        await gateway.create_key("alice")  # by someone else, e.g. the CLI
        # The app ticks the pane every second too; count from zero, without yielding.
        pane._ticks = 0
        for _ in range(9):
            pane.tick()
        assert not [w for w in app.workers if w.group == "keys-load"]  # not every second
        pane.tick()
        await until(pilot, lambda: table(app).row_count == 1)


async def test_the_tab_takes_the_keys_at_once_and_lets_go_of_them(tmp_path: Path) -> None:
    app = LlmgwTui(tmp_path / "no.sock", live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("k")
        assert focused(app) is table(app)
        await pilot.press("u")
        assert app.query_one(TabbedContent).active == "usage"
        await pilot.press("k", "slash")
        assert focused(app) is app.query_one("#keys-search", Input)
        await pilot.click("#--content-tab-requests")  # the mouse leaves from the search
        assert app.query_one(TabbedContent).active == "requests"


# --- the look -------------------------------------------------------------------------

SOCKET = Path("/run/llmgw/admin.sock")
CANNED: list[KeyView] = [
    {
        "id": id_,
        "key_prefix": prefix,
        "user_id": user,
        "tier": tier,
        "description": description,
        "is_active": active,
        "created_at": "2026-01-05T09:00:00.000Z",
        "updated_at": "2026-01-05T09:00:00.000Z",
        "expires_at": expires,
        "last_used_at": used,
        "allowed_models": None,
        "requests_per_minute": None,
        "requests_per_hour": None,
        "tokens_per_minute": None,
        "tokens_per_day": None,
        "max_in_flight": None,
        "budget_tokens": None,
        "budget_period": None,
    }
    for id_, prefix, user, tier, description, active, expires, used in (
        (1, "sk-internal-Qx3v", "alice", "premium", "laptop", True, None,
         "2026-03-02T14:31:07.120Z"),
        (2, "sk-internal-9fKd", "bob", "free", "ci runner [nightly]", True,
         "2027-01-31T00:00:00.000Z", None),
        (3, "sk-internal-mT0a", "carol", "standard", "notebook", False,
         "2026-06-30T00:00:00.000Z", "2026-02-11T08:02:55.000Z"),
        (4, "sk-internal-Lw7Z", "data-team", "premium", "batch embeddings for the search index",
         True, None, "2026-03-02T14:35:40.900Z"),
    )
]  # fmt: skip
# alice's key has limits of its own: a token rate and a monthly budget.
CANNED[0] |= {"tokens_per_minute": 20_000, "budget_tokens": 1_000_000, "budget_period": "month"}
# data-team's: no daily token limit at all, and many requests at once.
CANNED[3] |= {"tokens_per_day": 0, "max_in_flight": 16}
TierRow = tuple[str, int, int, int, int, int, int, Literal["day", "week", "month"], int]
TIER_ROWS: tuple[TierRow, ...] = (
    # name, requests/min, /hour, tokens/min, /day, in flight, budget, its period, priority
    ("free", 10, 100, 2_000, 50_000, 2, 200_000, "month", 0),
    ("standard", 30, 300, 10_000, 200_000, 4, 0, "week", 1),
    ("premium", 100, 1000, 0, 0, 16, 0, "month", 2),
)
TIERS: list[TierView] = [
    {
        "name": name,
        "requests_per_minute": rpm,
        "requests_per_hour": rph,
        "tokens_per_minute": tpm,
        "tokens_per_day": tpd,
        "max_in_flight": in_flight,
        "budget_tokens": budget,
        "budget_period": period,
        "default_max_tokens": 1024,
        "priority": priority,
    }
    for name, rpm, rph, tpm, tpd, in_flight, budget, period, priority in TIER_ROWS
]
# As long as a real key (sk-internal- and 32 bytes of URL-safe base64), but not one.
FAKE_SECRET = "sk-internal-c25hcHNob3Qgb25seSwgbm90IGEgcmVhbCBrZXkhISE"


async def show_canned_keys(pilot: Pilot[None]) -> None:
    await pilot.press("k")
    pilot.app.query_one(KeysPane).post_message(KeysLoaded(CANNED))
    await pilot.pause()


async def show_new_key(pilot: Pilot[None]) -> None:
    await show_canned_keys(pilot)  # over this pane, not one that others may change
    heading = "Created key 5 (sk-internal-c25h, alice), tier free."
    await pilot.app.push_screen(NewKeyScreen(FAKE_SECRET, heading))
    await pilot.pause()


async def test_the_table_fits_the_width_it_has() -> None:
    """The description gives way, then the prefix's common part: the dates stay whole
    and no sideways scrollbar appears (its blocks were left in the empty rows)."""
    app = LlmgwTui(SOCKET, live=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await show_canned_keys(pilot)
        grid = table(app)
        used = ["2026-03-02 14:31", "never", "2026-02-11 08:02", "2026-03-02 14:35"]
        assert column(app, "last_used_at") == used
        assert column(app, "key_prefix") == ["…Qx3v", "…9fKd", "…mT0a", "…Lw7Z"]
        assert all(d.endswith("…") for d in column(app, "description"))
        assert grid.virtual_size.width <= grid.scrollable_content_region.width
        assert not grid.show_horizontal_scrollbar

        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert column(app, "key_prefix")[0] == "sk-internal-Qx3v"
        assert column(app, "description")[:3] == ["laptop", "ci runner [nightly]", "notebook"]
        assert column(app, "description")[3].startswith("batch embeddings for")
        assert grid.virtual_size.width <= grid.scrollable_content_region.width


class RecordingGateway:
    """Stands in for the key calls of the app's admin client: what the form sends is
    recorded, and the gateway's answers are the canned keys."""

    def __init__(self) -> None:
        self.created: list[tuple[str, dict[str, Any]]] = []
        self.updated: list[tuple[int, dict[str, Any]]] = []

    def attach(self, app: LlmgwTui, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("tiers", "list_keys", "create_key", "update_key"):
            monkeypatch.setattr(app.client, name, getattr(self, name))

    async def tiers(self) -> Tiers:
        return {"default": "standard", "data": TIERS}

    async def list_keys(self) -> list[KeyView]:
        return CANNED

    async def create_key(self, user_id: str, **fields: Any) -> CreatedKey:
        self.created.append((user_id, fields))
        return cast(
            CreatedKey, CANNED[0] | fields | {"id": 5, "user_id": user_id, "key": FAKE_SECRET}
        )

    async def update_key(self, key_id: int, changes: dict[str, Any]) -> KeyView:
        self.updated.append((key_id, changes))
        return cast(KeyView, CANNED[key_id - 1] | changes)


async def open_form(pilot: Pilot[None], key_id: int | None) -> KeyFormScreen:
    """The new-key form (`key_id` None) or the edit form of a canned key, its tiers in."""
    await show_canned_keys(pilot)
    if key_id is None:
        await pilot.press("n")
    else:
        await select_key(pilot, key_id)
        await pilot.press("e")
    screen = form(pilot.app)
    await until(pilot, lambda: isinstance(screen.query_one("#tier", Select).value, str))
    return screen


async def test_the_new_key_form_sends_every_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    app, gateway = LlmgwTui(SOCKET, live=False), RecordingGateway()
    async with app.run_test(size=(120, 40)) as pilot:
        gateway.attach(app, monkeypatch)
        await open_form(pilot, None)
        await pilot.press(*"erin")
        fill(
            app,
            requests_per_minute="60",
            tokens_per_minute="20,000",
            tokens_per_day="0",
            max_in_flight="4",
            budget_tokens="5_000_000",
        )
        form(app).query_one("#budget_period", Select).value = "month"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, NewKeyScreen))
    # An empty limit (requests per hour) is the tier's: not sent.
    assert gateway.created == [
        (
            "erin",
            {
                "tier": "standard",
                "description": "",
                "expires_at": None,
                "allowed_models": None,
                "requests_per_minute": 60,
                "tokens_per_minute": 20_000,
                "tokens_per_day": 0,
                "max_in_flight": 4,
                "budget_tokens": 5_000_000,
                "budget_period": "month",
            },
        )
    ]


async def test_the_edit_form_sends_the_limits_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    app, gateway = LlmgwTui(SOCKET, live=False), RecordingGateway()
    async with app.run_test(size=(120, 40)) as pilot:
        gateway.attach(app, monkeypatch)
        screen = await open_form(pilot, 1)  # alice: 20,000 tokens a minute, 1M a month
        texts = {n: screen.query_one(f"#{n}", Input).value for n in LIMIT_FIELDS[:-1]}
        assert texts == {
            "requests_per_minute": "",
            "requests_per_hour": "",
            "tokens_per_minute": "20000",
            "tokens_per_day": "",
            "max_in_flight": "",
            "budget_tokens": "1000000",
        }
        assert screen.query_one("#budget_period", Select).value == "month"
        fill(app, tokens_per_minute="", tokens_per_day="150000", max_in_flight="0")
        screen.query_one("#budget_period", Select).value = "tier"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, KeyFormScreen))
    # Emptied is the tier's again (null); the budget's tokens stayed as they were.
    assert gateway.updated == [
        (
            1,
            {
                "tokens_per_minute": None,
                "tokens_per_day": 150_000,
                "max_in_flight": 0,
                "budget_period": None,
            },
        )
    ]


@pytest.mark.parametrize(
    ("name", "typed", "said"),
    [
        ("tokens_per_minute", "1.5", "Tokens per minute: '1.5' is not a whole number"),
        ("tokens_per_day", "-20", "Tokens per day: '-20' is not a whole number"),
        ("max_in_flight", "lots", "Requests in flight: 'lots' is not a whole number"),
        ("budget_tokens", "5M", "Budget tokens: '5M' is not a whole number"),
        ("requests_per_minute", "0", "Requests per minute: at least 1"),
        ("requests_per_hour", "1e3", "Requests per hour: '1e3' is not a whole number"),
    ],
)
async def test_a_limit_that_is_not_one_is_refused_in_the_form(
    monkeypatch: pytest.MonkeyPatch, name: str, typed: str, said: str
) -> None:
    app, gateway = LlmgwTui(SOCKET, live=False), RecordingGateway()
    async with app.run_test(size=(120, 40)) as pilot:
        gateway.attach(app, monkeypatch)
        for key_id in (None, 2):
            screen = await open_form(pilot, key_id)
            if key_id is None:
                await pilot.press(*"frank")
            fill(app, **{name: typed})
            await pilot.press("ctrl+s")
            await pilot.pause()
            note = screen.query_one("#limits-note", Static)
            assert note.has_class("-error")
            assert str(note.render()).startswith(said)
            assert focused(app) is screen.query_one(f"#{name}", Input)
            assert app.screen is screen  # still open, with what was typed
            assert screen.query_one(f"#{name}", Input).value == typed
            assert not screen.query_one("#save", Button).disabled
            await pilot.press("escape")
    assert gateway.created == []  # nothing was sent
    assert gateway.updated == []


async def test_an_empty_limit_shows_the_tiers_value(monkeypatch: pytest.MonkeyPatch) -> None:
    app, gateway = LlmgwTui(SOCKET, live=False), RecordingGateway()
    async with app.run_test(size=(120, 40)) as pilot:
        gateway.attach(app, monkeypatch)
        screen = await open_form(pilot, None)

        def placeholders() -> list[str]:
            return [screen.query_one(f"#{n}", Input).placeholder for n in LIMIT_FIELDS[:-1]]

        def period_options() -> list[str]:
            select = screen.query_one("#budget_period", Select)
            return [str(prompt) for prompt, _ in select._options]

        assert placeholders() == ["30", "300", "10000", "200000", "4", "no limit"]
        assert period_options() == ["the tier's: a week", "a day", "a week", "a month"]
        screen.query_one("#tier", Select).value = "premium"
        await pilot.pause()
        assert placeholders() == ["100", "1000", "no limit", "no limit", "16", "no limit"]
        assert period_options()[0] == "the tier's: a month"
        assert screen.query_one("#budget_period", Select).value == "tier"


async def test_the_selected_keys_limits_show_under_the_table() -> None:
    app = LlmgwTui(SOCKET, live=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await show_canned_keys(pilot)
        line = app.query_one("#key-limits", Static)
        assert str(line.render()) == (
            "limits: tokens/min 20,000 · budget 1,000,000 tokens a month; the rest as tier premium"
        )
        await select_key(pilot, 2)
        assert str(line.render()) == "limits: as tier free"
        await select_key(pilot, 4)
        assert str(line.render()) == (
            "limits: tokens/day unlimited · in flight 16; the rest as tier premium"
        )


@pytest.mark.parametrize(
    ("own", "said"),
    [
        ({"budget_tokens": 0, "budget_period": "week"}, "no budget"),
        ({"budget_tokens": 5_000}, "budget 5,000 tokens (tier's period)"),
        ({"budget_period": "day"}, "budget (tier's) a day"),
        ({"requests_per_hour": 50, "max_in_flight": 0}, "requests/hour 50 · in flight unlimited"),
    ],
)
def test_a_keys_own_limits_in_words(own: dict[str, Any], said: str) -> None:
    key = cast(KeyView, CANNED[1] | own)  # bob's key, tier free
    assert describe_limits(key) == f"limits: {said}; the rest as tier free"


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_keys_tab_looks_right(snap_compare: Any, size: tuple[int, int]) -> None:
    app = LlmgwTui(SOCKET, live=False)
    assert snap_compare(app, terminal_size=size, run_before=show_canned_keys)


async def show_rotated_revoked_key(pilot: Pilot[None]) -> None:
    await show_canned_keys(pilot)
    carol = CANNED[2]  # revoked
    assert not carol["is_active"]
    await pilot.app.push_screen(NewKeyScreen(FAKE_SECRET, rotated(carol)))
    await pilot.pause()


async def edit_revoked_key(pilot: Pilot[None]) -> None:
    await show_canned_keys(pilot)
    await pilot.press("down", "down", "e")  # carol's key, revoked
    with contextlib.suppress(WorkerFailed):  # the tiers: no gateway behind SOCKET
        await pilot.app.workers.wait_for_complete()
    form(pilot.app).post_message(TiersLoaded("standard", TIERS[1:2]))
    await pilot.pause()
    pilot.app.clear_notifications()
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_rotated_revoked_key_screen_looks_right(
    snap_compare: Any, size: tuple[int, int]
) -> None:
    app = LlmgwTui(SOCKET, live=False)
    assert snap_compare(app, terminal_size=size, run_before=show_rotated_revoked_key)


def test_the_edit_form_of_a_revoked_key_looks_right(snap_compare: Any) -> None:
    app = LlmgwTui(SOCKET, live=False)
    assert snap_compare(app, terminal_size=(80, 24), run_before=edit_revoked_key)


def test_the_new_key_screen_looks_right(snap_compare: Any) -> None:
    app = LlmgwTui(SOCKET, live=False)
    assert snap_compare(app, terminal_size=(80, 24), run_before=show_new_key)
