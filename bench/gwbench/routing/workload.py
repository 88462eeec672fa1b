"""The routing bench's workloads: users in multi-turn conversations, and when they speak.

Pure and seeded: the same seed gives every target the same users, teams, system prompts,
messages and arrival times. A *word* is a prompt token in the simulated server.

- `prefix-heavy`: the users are spread over teams; every conversation of a team opens with
  the team's system prompt (several thousand words).
- `no-sharing`: every conversation opens with a system prompt of its own, as long as a
  team's, so nothing but a conversation's own earlier turns can be reused.

A conversation is `turns` exchanges: each turn sends the whole conversation so far (the
system prompt, every earlier user message and the answer the server gave to it) and a
new user message. A user's conversations follow each other; each has a session id of its
own (`x-session-id`), the user's name goes in the body's `user`.

A conversation lasts longer than a run, so users do not all begin one when the run
begins: each is met at a random turn of its first conversation, the exchanges before it
made up (a made-up answer of the turn's `max_tokens` words) and sent as its history, which
no server has seen. A run thus starts as a fleet restarted under ongoing conversations
would: the turns are those of a steady state, the caches cold.

Arrivals are open loop: turn arrivals are a Poisson process of `rate` a second; each
arrival is the next turn of a user drawn uniformly. A turn whose user is still reading the
previous answer waits until that answer has ended plus `MIN_THINK` (the client reports
how many waited, and how long); every other turn goes at its arrival time, whatever the
latency, so the offered rate does not bend to the servers' speed.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

MIN_THINK = 0.25  # seconds a user reads an answer before the next turn can go
# The simulated chat template (llmgw/fake_vllm/tokens.py): 4 tokens a message, 2 to open
# the answer.
TOKENS_PER_MESSAGE = 4
GENERATION_PROMPT_TOKENS = 2


@dataclass(frozen=True)
class Shape:
    """What a workload's conversations look like; ranges are uniform and inclusive."""

    name: str
    shared: bool  # a team's conversations share its system prompt
    users: int = 64
    teams: int = 16
    system_words: tuple[int, int] = (3000, 6000)
    turns: tuple[int, int] = (3, 8)
    message_words: tuple[int, int] = (20, 200)
    max_tokens: tuple[int, int] = (32, 128)


SHAPES = {
    "prefix-heavy": Shape("prefix-heavy", shared=True),
    "no-sharing": Shape("no-sharing", shared=False),
}


@dataclass(frozen=True)
class Turn:
    at: float  # seconds after the start the turn arrives
    user: str  # the body's `user`
    session: str  # the conversation's id: `x-session-id`
    index: int  # 1 for a conversation's first turn
    system: str  # the conversation's system prompt
    message: str  # the new user message
    max_tokens: int
    prompt_words: int  # what the turn sends, counted by the simulator's rule
    history_words: int = field(default=0, repr=False)  # of that, earlier turns
    # The exchanges (user message, answer) before the run met the user: the first turn
    # of a user in a run carries its made-up history; the others have none here.
    earlier: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@functools.cache
def vocabulary(seed: int, size: int = 4096) -> list[str]:
    """Made-up words of two to four syllables, all different."""
    rng = random.Random(f"{seed}:vocabulary")
    onsets, vowels = "bdfghklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < size:
        n = rng.randint(2, 4)
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(n)))
    return sorted(words)


class _User:
    """One user's conversations, one turn at a time, from the user's own random stream
    (so the arrival process does not change what a user says)."""

    def __init__(self, shape: Shape, seed: int, index: int, team_prompt: str) -> None:
        self._shape = shape
        self._rng = random.Random(f"{seed}:user:{index}")
        self._words = vocabulary(seed)
        self.name = f"user-{index:03d}"
        self._team_prompt = team_prompt
        self._conversation = 0
        self._left = 0
        self._system = ""
        self._system_words = 0
        self._turn = 0
        self._history = 0  # words of the earlier turns, answers included
        self._earlier: list[tuple[str, str]] = []
        self._begin_conversation()
        for _ in range(self._rng.randrange(self._left)):  # met mid-conversation
            message, max_tokens = self._exchange()
            self._earlier.append((message, prompt(self._rng, self._words, max_tokens)))

    def _begin_conversation(self) -> None:
        shape, rng = self._shape, self._rng
        self._conversation += 1
        self._left = rng.randint(*shape.turns)
        self._turn = 0
        self._history = 0
        if shape.shared:
            self._system = self._team_prompt
        else:
            self._system = prompt(rng, self._words, rng.randint(*shape.system_words))
        self._system_words = len(self._system.split())

    def _exchange(self) -> tuple[str, int]:
        """The next turn's message and answer length, the turn counted as taken."""
        shape, rng = self._shape, self._rng
        self._left -= 1
        self._turn += 1
        message = " ".join(rng.choices(self._words, k=rng.randint(*shape.message_words)))
        max_tokens = rng.randint(*shape.max_tokens)
        # The simulated server answers exactly max_tokens words (finish_reason "length").
        self._history += len(message.split()) + max_tokens
        return message, max_tokens

    def next_turn(self, at: float) -> Turn:
        if self._left == 0:
            self._begin_conversation()
        history = self._history
        message, max_tokens = self._exchange()
        words = self._system_words + history + len(message.split())
        messages = 2 * self._turn  # system, then a user message and an answer a turn
        turn = Turn(
            at=at, user=self.name, session=f"{self.name}-c{self._conversation}",
            index=self._turn, system=self._system, message=message, max_tokens=max_tokens,
            prompt_words=words + TOKENS_PER_MESSAGE * messages + GENERATION_PROMPT_TOKENS,
            history_words=history, earlier=tuple(self._earlier),
        )  # fmt: skip
        self._earlier = []
        return turn


def prompt(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choices(words, k=n))


def team_prompts(shape: Shape, seed: int) -> list[str]:
    """Each user's team's system prompt ("" without sharing); users join teams at random,
    so teams differ in size as real ones do."""
    if not shape.shared:
        return [""] * shape.users
    rng = random.Random(f"{seed}:teams")
    words = vocabulary(seed)
    lengths = [rng.randint(*shape.system_words) for _ in range(shape.teams)]
    prompts = [
        f"You are the assistant of team {t}. " + prompt(rng, words, n)
        for t, n in enumerate(lengths)
    ]
    return [prompts[rng.randrange(shape.teams)] for _ in range(shape.users)]


def arrivals(rate: float, seconds: float, seed: int) -> Iterator[float]:
    rng = random.Random(f"{seed}:arrivals:{rate:.6f}")
    t = rng.expovariate(rate)
    while t < seconds:
        yield t
        t += rng.expovariate(rate)


def plan(shape: Shape, rate: float, seconds: float, seed: int, limit: int) -> list[Turn]:
    """Every turn of a run, in arrival order: at most `limit`, none after `seconds`."""
    teams = team_prompts(shape, seed)
    users = [_User(shape, seed, i, teams[i]) for i in range(shape.users)]
    pick = random.Random(f"{seed}:who:{rate:.6f}")
    turns: list[Turn] = []
    for at in arrivals(rate, seconds, seed):
        if len(turns) >= limit:
            break
        turns.append(users[pick.randrange(len(users))].next_turn(at))
    return turns


@dataclass(frozen=True)
class Mix:
    """The mean request of a workload, over a long stretch of its turns."""

    prompt_tokens: float
    output_tokens: float
    new_tokens: float  # prompt tokens no earlier request of the workload had sent


def mix(shape: Shape, seed: int, turns: int = 4000) -> Mix:
    """A workload's mean request, from its first `turns` turns (arrival times do not
    change what users say, only in which order their turns interleave)."""
    sample = plan(shape, rate=1.0, seconds=float("inf"), seed=seed, limit=turns)
    seen_systems: set[str] = set()
    new = 0
    for turn in sample:
        fresh = turn.prompt_words - turn.history_words
        if turn.system in seen_systems:
            fresh -= len(turn.system.split())
        seen_systems.add(turn.system)
        new += fresh
    n = len(sample)
    return Mix(
        prompt_tokens=sum(t.prompt_words for t in sample) / n,
        output_tokens=sum(t.max_tokens for t in sample) / n,
        new_tokens=new / n,
    )
