"""The simulated server's KV cache: blocks, their hashes, the prefix cache and its LRU.

Modelled on vLLM 0.32.0's ``vllm/v1/core/block_pool.py`` and ``kv_cache_utils.py``
(one full-attention KV-cache group, prefix caching on, no KV events):

- ``num_gpu_blocks`` blocks of ``block_size`` tokens; block 0 is vLLM's null block and
  is never handed out, so ``num_gpu_blocks - 1`` hold tokens and usage is
  ``1 - free / (num_gpu_blocks - 1)`` (``BlockPool.get_usage``).
- A full block's hash chains its parent's: ``hash_block_tokens`` hashes (parent hash, or
  ``NONE_HASH`` for the first block; the block's token ids; extra keys, always None
  here). vLLM's default pickles that tuple into SHA-256; this hashes the same three
  things with a fixed byte encoding (32 parent bytes, then the ids as little-endian
  unsigned 32-bit), so the values are stable across processes and Python versions but
  are not vLLM's bytes. Nothing compares them with vLLM's.
- A block is cached (its hash registered) once a request has scheduled all its tokens,
  as ``KVCacheManager.allocate_slots`` does; several blocks may hold one hash (two
  requests computing the same prefix at once), and a lookup takes any of them.
- Freed blocks keep their hashes: a request frees its blocks tail first; blocks with a
  hash join the end of the free queue (evicted last, least recently freed first), blocks
  without one its front (reused first). A block is evicted (its hash forgotten) only
  when it is taken from the front of the free queue for new tokens. A block that a
  lookup hits is taken out of the free queue (``touch``); blocks that requests hold
  (``ref_cnt > 0``) are never in the free queue, so never evicted.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NewType

BlockHash = NewType("BlockHash", bytes)

# vLLM's NONE_HASH with a cryptographic hash and no PYTHONHASHSEED: the hash of the seed
# "vllm-none-hash", fixed so every server agrees on it.
NONE_HASH = BlockHash(hashlib.sha256(b"vllm-none-hash").digest())


def _ids_bytes(token_ids: Sequence[int]) -> bytes:
    ids = array("I", token_ids)
    if ids.itemsize != 4:  # pragma: no cover -- "I" is 4 bytes on every platform we run
        raise RuntimeError("array('I') is not 32-bit here")
    return ids.tobytes()


def hash_block_tokens(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """A full block's hash, chained to its parent's (None: the first block)."""
    return BlockHash(hashlib.sha256((parent or NONE_HASH) + _ids_bytes(token_ids)).digest())


def block_hashes(token_ids: Sequence[int], block_size: int) -> list[BlockHash]:
    """The hashes of the full blocks of ``token_ids`` (a trailing partial block has none)."""
    raw = _ids_bytes(token_ids)
    width = 4 * block_size
    hashes: list[BlockHash] = []
    parent = NONE_HASH
    sha256 = hashlib.sha256
    for start in range(0, len(raw) - width + 1, width):
        parent = BlockHash(sha256(parent + raw[start : start + width]).digest())
        hashes.append(parent)
    return hashes


@dataclass(eq=False, slots=True)
class Block:
    block_id: int
    ref_cnt: int = 0  # requests holding it
    block_hash: BlockHash | None = None  # set while the block is in the prefix cache


class BlockPool:
    """The blocks, the free queue (eviction order: front first) and the prefix cache."""

    def __init__(self, num_gpu_blocks: int) -> None:
        if num_gpu_blocks < 2:
            raise ValueError("num_gpu_blocks must be at least 2 (block 0 is the null block)")
        self.num_usable_blocks = num_gpu_blocks - 1
        self._free: OrderedDict[int, Block] = OrderedDict(
            (i, Block(i)) for i in range(1, num_gpu_blocks)
        )
        self._cached: dict[BlockHash, dict[int, Block]] = {}
        self.num_evictions = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds, cached or not: what new tokens may take."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return sum(len(blocks) for blocks in self._cached.values())

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def free_queue(self) -> list[Block]:
        """The free blocks in eviction order (for tests and debugging)."""
        return list(self._free.values())

    def is_cached(self, block_hash: BlockHash) -> bool:
        return block_hash in self._cached

    def longest_hit(self, hashes: Sequence[BlockHash], max_blocks: int) -> list[Block]:
        """The cached blocks of the longest run of ``hashes`` from the start."""
        hit: list[Block] = []
        for block_hash in hashes[:max_blocks]:
            blocks = self._cached.get(block_hash)
            if not blocks:
                break
            hit.append(next(iter(blocks.values())))
        return hit

    def touch(self, blocks: Iterable[Block]) -> None:
        """A request takes cached blocks it hit: one more holder each, out of the free
        queue if nobody held them."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def allocate(self, n: int) -> list[Block]:
        """``n`` blocks from the front of the free queue, evicting their hashes."""
        if n > len(self._free):
            raise ValueError(f"cannot allocate {n} blocks, {len(self._free)} free")
        taken = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                self._evict(block)
            block.ref_cnt = 1
            taken.append(block)
        return taken

    def _evict(self, block: Block) -> None:
        assert block.block_hash is not None
        holders = self._cached[block.block_hash]
        del holders[block.block_id]
        if not holders:
            del self._cached[block.block_hash]
        block.block_hash = None
        self.num_evictions += 1

    def cache(self, blocks: Sequence[Block], hashes: Sequence[BlockHash]) -> None:
        """Register full blocks under their hashes (``BlockPool.cache_full_blocks``)."""
        for block, block_hash in zip(blocks, hashes, strict=True):
            if block.block_hash is not None:  # a prefix hit, cached already
                continue
            block.block_hash = block_hash
            self._cached.setdefault(block_hash, {})[block.block_id] = block

    def free(self, blocks: Sequence[Block]) -> None:
        """A request lets go of its blocks (``SingleTypeKVCacheManager.free``): tail first,
        so that of one request's blocks the last ones are evicted first."""
        evict_first: list[Block] = []
        for block in reversed(blocks):
            block.ref_cnt -= 1
            if block.ref_cnt > 0:
                continue
            if block.block_hash is None:
                evict_first.append(block)
            else:
                self._free[block.block_id] = block  # the end: evicted last
        for block in reversed(evict_first):  # vLLM's prepend_n keeps their order
            self._free[block.block_id] = block
            self._free.move_to_end(block.block_id, last=False)
