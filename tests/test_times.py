"""The timestamp format: the fast path writes exactly what datetime writes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llmgw.times import _iso_utc, iso_utc, parse_iso

# Whole seconds plus a fraction close to a half microsecond or millisecond, where
# rounding decides; and any float at all.
NEAR_EDGES = st.builds(
    lambda s, us, nudge: s + us / 1e6 + nudge,
    st.integers(0, 99_999_999_999),
    st.integers(0, 999_999).map(lambda us: us + 0.5),
    st.sampled_from([0.0, 1e-9, -1e-9, 1e-12, -1e-12]),
)


@given(st.one_of(NEAR_EDGES, st.floats(-1e10, 2e11, allow_nan=False)))
def test_iso_utc_is_datetimes_format(epoch: float) -> None:
    assert iso_utc(epoch) == _iso_utc(epoch)


def test_iso_utc_round_trips_to_the_millisecond() -> None:
    assert iso_utc(1_790_002_800.0) == "2026-09-21T15:00:00.000Z"
    assert iso_utc(1_790_002_799.9999996) == "2026-09-21T15:00:00.000Z"  # rounds up a second
    assert parse_iso(iso_utc(1_790_002_800.123)) == 1_790_002_800.123
