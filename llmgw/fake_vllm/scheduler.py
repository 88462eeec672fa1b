"""The simulated server's scheduler: vLLM v1's continuous batching over ``kv_cache``,
with a step cost model instead of a GPU. Pure and synchronous: ``engine`` runs it in real
time; tests drive it step by step.

Modelled on vLLM 0.32.0's ``vllm/v1/core/sched/scheduler.py`` (``schedule``,
``update_from_output``, FCFS policy, chunked prefill on, ``scheduler_reserve_full_isl``
on, watermark 0) and ``vllm/v1/core/kv_cache_manager.py``. Each step:

1. Running requests, in the order they were admitted, each get their next tokens while
   the token budget (``max_num_batched_tokens``) lasts: a decoding request 1 token, one
   still prefilling the rest of its prompt (a chunk, if the budget is short). A request
   whose new tokens need a block when none is free preempts the last running request (its
   blocks freed, it goes back to the front of the queue to be recomputed), vLLM's
   recompute preemption; no request is admitted in such a step.
2. Waiting requests are admitted first come first served while fewer than
   ``max_num_seqs`` run and budget is left: the prompt's longest run of cached full blocks
   is taken (at most ``num_tokens - 1`` tokens, so the last one is computed), and only if
   the blocks for the whole prompt fit in the free blocks (hits that sit in the free
   queue count too); otherwise the queue waits. The first request that does not fit
   stops admission (head-of-line, as vLLM's FCFS).
3. The step takes ``decode_time_per_step + decode_time_per_seq * decoding sequences +
   prefill_time_per_token * prompt tokens computed``. When it ends, every request that
   reached the end of its known tokens samples one: generated token ``i`` is the word
   ``tok{i}`` (``token_ids``); a request with ``max_tokens`` generated finishes and frees
   its blocks.

The prefix cache counters are ``PrefixCacheStats``' as the Prometheus counters report
them: at admission a new request adds its prompt length to the queries and its hit
tokens to the hits; a preempted request's re-admission adds to neither.

Left out: priorities, speculative decoding, LoRA, multimodal, KV connectors, the
``long_prefill_token_threshold`` (0 by default in vLLM), stop strings (a request runs to
its ``max_tokens``), async scheduling (the next step is scheduled when the previous one
ends).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .kv_cache import Block, BlockHash, BlockPool, block_hashes, hash_block_tokens
from .token_ids import generated_token_id

Status = Literal["waiting", "running", "finished", "aborted"]


@dataclass(frozen=True)
class SimulationSettings:
    """A simulated server: its scheduler limits, its KV cache and its speed.

    The defaults (also the command line's) describe a modest GPU serving a mid-sized
    model: a batch of 16 sequences, 4,096 blocks of 16 tokens (65,520 tokens of KV
    cache), vLLM's 2,048 batched tokens per step, prefill at 10,000 tokens/s and a
    20 ms step. They are parameters: pick the ones your measurement needs.
    """

    max_num_seqs: int = 16
    num_gpu_blocks: int = 4096
    block_size: int = 16
    max_num_batched_tokens: int = 2048
    prefill_time_per_token: float = 0.0001  # seconds per prompt token computed
    decode_time_per_step: float = 0.02  # seconds every step (forward pass) costs
    decode_time_per_seq: float = 0.0  # seconds more per sequence decoding in the step

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "block_size", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.num_gpu_blocks < 2:
            raise ValueError("num_gpu_blocks must be at least 2 (block 0 is the null block)")
        for name in ("prefill_time_per_token", "decode_time_per_step", "decode_time_per_seq"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be zero or more")

    @property
    def kv_cache_tokens(self) -> int:
        return (self.num_gpu_blocks - 1) * self.block_size

    def check_model_len(self, max_model_len: int) -> None:
        """vLLM refuses to start when one request of ``max_model_len`` tokens would not
        fit in the KV cache; so does the simulation."""
        if max_model_len > self.kv_cache_tokens:
            raise ValueError(
                f"max_model_len {max_model_len} is more than the KV cache holds "
                f"({self.num_gpu_blocks - 1} blocks of {self.block_size} tokens = "
                f"{self.kv_cache_tokens} tokens); raise num_gpu_blocks"
            )

    def step_time(self, prefill_tokens: int, decode_seqs: int) -> float:
        return (
            self.decode_time_per_step
            + self.decode_time_per_seq * decode_seqs
            + self.prefill_time_per_token * prefill_tokens
        )

    def capacity(self, prompt_tokens: int, cached_fraction: float, output_tokens: int) -> float:
        """Requests per second one server completes when saturated with requests alike.

        Each request computes its uncached prompt tokens and occupies one of ``batch``
        slots for ``output_tokens`` steps (its last prefill step samples the first token,
        then one decode step per further token). With ``batch`` requests always running,
        the time per request is ``output_tokens * decode_time_per_step / batch +
        (output_tokens - 1) * decode_time_per_seq + uncached * prefill_time_per_token``.
        ``batch`` is ``max_num_seqs``, or fewer when the KV cache cannot hold that many
        sequences' uncached blocks beside one copy of the cached prefix (which all
        share, as a team's system prompt is). An estimate: it ignores the steps a long
        prefill is split over and the budget ``max_num_batched_tokens`` puts on prefill
        tokens per step.
        """
        if prompt_tokens < 1 or output_tokens < 1 or not 0.0 <= cached_fraction <= 1.0:
            raise ValueError("capacity needs tokens in and out, and a fraction of 0..1 cached")
        bs = self.block_size
        cached_blocks = int(prompt_tokens * cached_fraction) // bs
        uncached = prompt_tokens - cached_blocks * bs
        own_blocks = math.ceil((prompt_tokens + output_tokens) / bs) - cached_blocks
        fits = (self.num_gpu_blocks - 1 - cached_blocks) // max(own_blocks, 1)
        batch = max(1, min(self.max_num_seqs, fits))
        seconds = (
            output_tokens * self.decode_time_per_step / batch
            + (output_tokens - 1) * self.decode_time_per_seq
            + uncached * self.prefill_time_per_token
        )
        return 1.0 / seconds


@dataclass(eq=False)
class Request:
    """One sequence in the engine: its tokens (prompt, then generated), blocks and state."""

    request_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    max_tokens: int
    block_size: int
    block_hashes: list[BlockHash]
    blocks: list[Block] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_blocks: int = 0  # of `blocks`, those registered in the prefix cache
    prefill_end: int = 0  # tokens below this, computed in a step, are prefill
    num_cached_tokens: int | None = None  # the prefix hit at its first admission
    num_preemptions: int = 0
    status: Status = "waiting"

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def done(self) -> bool:
        return self.status in ("finished", "aborted")

    def append_output_token(self) -> None:
        self.token_ids.append(generated_token_id(self.num_output_tokens))
        if self.num_tokens % self.block_size == 0:
            parent = self.block_hashes[-1] if self.block_hashes else None
            block = self.token_ids[-self.block_size :]
            self.block_hashes.append(hash_block_tokens(parent, block))


@dataclass(frozen=True)
class Batch:
    """One step: each scheduled request with its number of new tokens, and the cost."""

    scheduled: tuple[tuple[Request, int], ...]
    num_prefill_tokens: int
    num_decode_seqs: int
    duration: float


@dataclass(frozen=True)
class StepOutput:
    batch: Batch
    sampled: tuple[Request, ...]  # requests that got a token this step, in batch order
    finished: tuple[Request, ...]


@dataclass(frozen=True)
class SchedulerStats:
    """What /metrics reports, as vLLM's ``SchedulerStats`` and ``PrefixCacheStats``."""

    waiting: int
    running: int
    kv_cache_usage: float  # blocks held by requests / usable blocks, 0..1
    prefix_cache_queries: int  # prompt tokens looked up, since start
    prefix_cache_hits: int  # of those, tokens found cached
    num_preemptions: int
    num_steps: int


class Scheduler:
    def __init__(self, settings: SimulationSettings) -> None:
        self.settings = settings
        self.pool = BlockPool(settings.num_gpu_blocks)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.num_preemptions = 0
        self.num_steps = 0
        self._ids = itertools.count()

    def add_request(self, prompt_token_ids: Sequence[int], max_tokens: int) -> Request:
        bs = self.settings.block_size
        if not prompt_token_ids or max_tokens < 1:
            raise ValueError("a request needs a prompt and max_tokens of at least 1")
        if math.ceil((len(prompt_token_ids) + max_tokens) / bs) > self.pool.num_usable_blocks:
            raise ValueError("the request would not fit in the whole KV cache")
        ids = list(prompt_token_ids)
        request = Request(next(self._ids), ids, len(ids), max_tokens, bs, block_hashes(ids, bs))
        self.waiting.append(request)
        return request

    def abort(self, request: Request) -> None:
        """The client left: drop the request wherever it is and free its blocks."""
        if request.status == "waiting":
            self.waiting.remove(request)
        elif request.status == "running":
            self.running.remove(request)
            self._free(request)
        if not request.done:
            request.status = "aborted"

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            waiting=len(self.waiting),
            running=len(self.running),
            kv_cache_usage=self.pool.usage(),
            prefix_cache_queries=self.prefix_cache_queries,
            prefix_cache_hits=self.prefix_cache_hits,
            num_preemptions=self.num_preemptions,
            num_steps=self.num_steps,
        )

    # --- one step -----------------------------------------------------------------

    def step(self) -> StepOutput | None:
        """Schedule a step and finish it at once (tests; ``engine`` waits in between)."""
        batch = self.schedule()
        return None if batch is None else self.update(batch)

    def schedule(self) -> Batch | None:
        """Decide the next step; None when there is nothing to run."""
        budget = self.settings.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            n = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self._grow(request, n):
                preempted = True
                if request.status != "running":  # it preempted itself: nobody else to
                    break
                continue  # the victim was at the tail; try again
            scheduled.append((request, n))
            budget -= n
            index += 1
        while not preempted and self.waiting and budget > 0:
            if len(self.running) >= self.settings.max_num_seqs:
                break
            n = self._admit(self.waiting[0], budget)
            if n == 0:
                break
            request = self.waiting.popleft()
            self.running.append(request)
            scheduled.append((request, n))
            budget -= n
        if not scheduled:
            return None
        prefill = decode = 0
        for request, n in scheduled:
            start = request.num_computed_tokens
            in_prefill = max(0, min(start + n, request.prefill_end) - start)
            prefill += in_prefill
            decode += n > in_prefill
        return Batch(tuple(scheduled), prefill, decode, self.settings.step_time(prefill, decode))

    def update(self, batch: Batch) -> StepOutput:
        """The step has run: advance each request, sample tokens, finish the done ones."""
        self.num_steps += 1
        sampled: list[Request] = []
        finished: list[Request] = []
        for request, n in batch.scheduled:
            if request.status != "running":  # aborted while the step ran
                continue
            request.num_computed_tokens += n
            if request.num_computed_tokens < request.num_tokens:
                continue  # a prefill chunk: no token yet
            request.append_output_token()
            sampled.append(request)
            if request.num_output_tokens >= request.max_tokens:
                request.status = "finished"
                self.running.remove(request)
                self._free(request)
                finished.append(request)
        return StepOutput(batch, tuple(sampled), tuple(finished))

    # --- blocks -------------------------------------------------------------------

    def _admit(self, request: Request, budget: int) -> int:
        """Take a waiting request's prefix hit and the blocks for its first chunk; the
        number of tokens it computes this step, 0 if its whole prompt does not fit."""
        bs = self.settings.block_size
        hit = self.pool.longest_hit(request.block_hashes, (request.num_tokens - 1) // bs)
        evictable = sum(block.ref_cnt == 0 for block in hit)
        needed = math.ceil(request.num_tokens / bs) - len(hit) + evictable
        if needed > self.pool.num_free_blocks:
            return 0
        computed = len(hit) * bs
        n = min(request.num_tokens - computed, budget)
        self.pool.touch(hit)
        request.blocks = hit
        request.num_cached_blocks = len(hit)
        request.num_computed_tokens = computed
        request.prefill_end = request.num_tokens
        self._allocate(request, n)
        if request.num_preemptions == 0:
            request.num_cached_tokens = computed
            self.prefix_cache_queries += request.num_tokens
            self.prefix_cache_hits += computed
        request.status = "running"
        return n

    def _grow(self, request: Request, n: int) -> bool:
        """Blocks for a running request's next ``n`` tokens, preempting the last running
        request while there are too few. False when a request was preempted instead."""
        needed = self._blocks_needed(request, n)
        if needed > self.pool.num_free_blocks:
            self._preempt(self.running.pop())
            return False
        self._allocate(request, n)
        return True

    def _blocks_needed(self, request: Request, n: int) -> int:
        needed = math.ceil((request.num_computed_tokens + n) / self.settings.block_size)
        return max(0, needed - len(request.blocks))

    def _allocate(self, request: Request, n: int) -> None:
        request.blocks += self.pool.allocate(self._blocks_needed(request, n))
        # Cache the blocks this step fills, as allocate_slots does before the step runs:
        # a request admitted later in this same step can hit them.
        full = min(request.num_computed_tokens + n, request.num_tokens) // request.block_size
        start = request.num_cached_blocks
        if full > start:
            self.pool.cache(request.blocks[start:full], request.block_hashes[start:full])
            request.num_cached_blocks = full

    def _preempt(self, request: Request) -> None:
        self._free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = "waiting"
        self.waiting.appendleft(request)
        self.num_preemptions += 1

    def _free(self, request: Request) -> None:
        self.pool.free(request.blocks)
        request.blocks = []
        request.num_cached_blocks = 0
