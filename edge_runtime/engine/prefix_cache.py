"""The prefix cache: the KV of token prefixes, kept after a request ends, for later requests.

Blocks of :data:`BLOCK_TOKENS` tokens form a tree: a block's children continue its prefix,
and a child is found by its own tokens, so a block stands for the whole prefix from the
first token to its end (a radix tree with one block per edge; no hash, no collision). The
KV of a position depends only on the tokens up to it, so any leading part of a block is
valid for a request that shares that part: a lookup takes whole blocks while they match
and then the longest matching start of one more. A sequence's last, partial block is kept
as a leaf of fewer tokens, so that a conversation's next turn finds the previous answer too.

The cache copies KV out of a slot when a sequence has read its prompt and when it ends, and
into a slot when a sequence starts (:class:`KvBlocks`, which the gqa runner implements). A
block is linked into the tree only once its copy is complete, so a failed copy leaves
nothing behind. It holds at most ``budget`` bytes: the least recently used leaf goes first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

BLOCK_TOKENS = 64
"""Tokens per block; the gqa runner's prompt chunk, so a block is one forward's worth."""

ReadKv = Callable[[int, int], np.ndarray]
"""``read(start, stop)``: a copy of the KV of positions ``start .. stop`` of one slot."""
WriteKv = Callable[[int, np.ndarray], None]
"""``write(start, kv)``: put ``kv`` (``n`` positions) at positions ``start .. start+n``."""


@runtime_checkable
class KvBlocks(Protocol):
    """Slots whose KV can be copied out and in by position (the gqa runner)."""

    @property
    def token_bytes(self) -> int:
        """The KV size of one position: every layer's keys and values."""
        ...

    def read(self, slot: int, start: int, stop: int) -> np.ndarray:
        """Return a copy of the KV of positions ``start .. stop`` of ``slot``."""
        ...

    def write(self, slot: int, start: int, kv: np.ndarray) -> None:
        """Put ``kv`` (as :meth:`read` returns it) at positions from ``start`` in ``slot``."""
        ...


@dataclass(eq=False)
class Block:
    """The KV of up to :data:`BLOCK_TOKENS` tokens continuing its parent's prefix."""

    tokens: tuple[int, ...]
    kv: np.ndarray  # the runner's layout for len(tokens) positions
    parent: Block | None
    children: dict[tuple[int, ...], Block] = field(default_factory=dict)
    used: int = 0  # when a lookup or an insert last went through it

    @property
    def full(self) -> bool:
        return len(self.tokens) == BLOCK_TOKENS



@dataclass
class CacheStats:
    """What the cache holds and how often it has been of use."""

    budget: int = 0  # bytes
    bytes: int = 0
    blocks: int = 0
    tokens: int = 0
    lookups: int = 0  # prompts looked up
    hits: int = 0  # prompts that found at least one token
    prompt_tokens: int = 0  # tokens of the prompts looked up
    cached_tokens: int = 0  # of which found in the cache
    stored_blocks: int = 0
    evicted_blocks: int = 0
    read_again: int = 0  # generated tokens read again as a prompt to keep them
    whole_blocks: bool = False  # only whole blocks read as a cold read reads them are kept

    @property
    def hit_rate(self) -> float:
        """The share of looked-up prompt tokens that came from the cache."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """Token prefixes' KV in blocks, within ``budget`` bytes; used from one thread.

    ``token_bytes`` is the KV size of one position (every layer's keys and values).
    """

    def __init__(self, budget: int, token_bytes: int) -> None:
        if budget < 0 or token_bytes < 1:
            raise ValueError("the prefix cache needs a budget >= 0 and a token size >= 1")
        self.token_bytes = token_bytes
        self.stats = CacheStats(budget=budget)
        self._root = Block((), np.empty(0), None)
        self._clock = itertools.count(1)

    @property
    def budget(self) -> int:
        return self.stats.budget

    @property
    def bytes(self) -> int:
        return self.stats.bytes

    @property
    def blocks(self) -> int:
        return self.stats.blocks

    @property
    def tokens(self) -> int:
        return self.stats.tokens

    # Looking up --------------------------------------------------------------------------

    def match(self, ids: Sequence[int], limit: int) -> list[tuple[Block, int]]:
        """Return the blocks (and how many of each one's tokens) that ``ids`` starts with.

        At most ``limit`` tokens are matched. Marks the blocks as used.
        """
        path: list[tuple[Block, int]] = []
        node, pos, stamp = self._root, 0, next(self._clock)
        while pos < limit:
            want = ids[pos : min(pos + BLOCK_TOKENS, limit)]
            child = node.children.get(tuple(want)) if len(want) == BLOCK_TOKENS else None
            count = BLOCK_TOKENS if child is not None else 0
            if child is None:
                child, count = self._best_start(node, want)
            if child is None or count == 0:
                break
            child.used = stamp
            path.append((child, count))
            pos += count
            if count < BLOCK_TOKENS:
                break
            node = child
        return path

    def load(self, ids: Sequence[int], limit: int, write: WriteKv) -> int:
        """Copy the KV of the longest cached start of ``ids`` (at most ``limit`` tokens).

        Return how many tokens were written from position 0; count the lookup.
        """
        stats = self.stats
        stats.lookups += 1
        stats.prompt_tokens += len(ids)
        pos = 0
        for block, count in self.match(ids, limit):
            write(pos, block.kv if count == len(block.tokens) else block.kv[..., :count, :])
            pos += count
        if pos:
            stats.hits += 1
            stats.cached_tokens += pos
        return pos

    @staticmethod
    def _best_start(node: Block, want: Sequence[int]) -> tuple[Block | None, int]:
        best, count = None, 0
        for child in node.children.values():
            n = _common(child.tokens, want)
            if n > count:
                best, count = child, n
        return best, count

    # Storing -----------------------------------------------------------------------------

    def store(self, ids: Sequence[int], read: ReadKv, *, partial: bool = True) -> int:
        """Keep the KV of ``ids`` (all of them in the slot ``read`` copies from).

        Blocks already cached are only marked as used; new ones are read from the slot.
        ``partial`` keeps a last block of fewer tokens too. Stops early when the budget
        cannot make room. Return how many tokens were newly stored.
        """
        node, stored, stamp = self._root, 0, next(self._clock)
        end = len(ids) if partial else len(ids) - len(ids) % BLOCK_TOKENS
        for start in range(0, end, BLOCK_TOKENS):
            tokens = tuple(ids[start : min(start + BLOCK_TOKENS, end)])
            child = node.children.get(tokens)
            if child is None and len(tokens) < BLOCK_TOKENS and self._covered(node, tokens):
                break  # a block that continues further already holds these tokens
            if child is None:
                child = self._add(node, tokens, start, read)
                if child is None:
                    break
                stored += len(tokens)
            child.used = stamp
            node = child
            if not child.full:
                break
        return stored

    @staticmethod
    def _covered(node: Block, tokens: tuple[int, ...]) -> bool:
        return any(child.tokens[: len(tokens)] == tokens for child in node.children.values())

    def _add(
        self, parent: Block, tokens: tuple[int, ...], start: int, read: ReadKv
    ) -> Block | None:
        """Read and link a new block under ``parent``; None when there is no room."""
        if not self._make_room(self.token_bytes * len(tokens), parent):
            return None
        kv = read(start, start + len(tokens))  # a failure here leaves the tree as it was
        for key, sibling in list(parent.children.items()):
            if not sibling.children and tokens[: len(sibling.tokens)] == sibling.tokens:
                self._drop(sibling, key)  # a shorter leaf this block now covers
        block = self._link(parent, tokens, kv)
        self.stats.stored_blocks += 1
        return block

    def _link(self, parent: Block, tokens: tuple[int, ...], kv: np.ndarray) -> Block:
        block = Block(tokens, kv, parent)
        parent.children[tokens] = block
        self._count(kv.nbytes, 1, len(tokens))
        return block

    def _count(self, size: int, blocks: int, tokens: int) -> None:
        stats = self.stats
        stats.bytes += size
        stats.blocks += blocks
        stats.tokens += tokens

    # Evicting ----------------------------------------------------------------------------

    def _make_room(self, needed: int, keep: Block) -> bool:
        """Evict least recently used leaves (never ``keep`` or its ancestors) to fit ``needed``."""
        if needed > self.budget:
            return False
        protected = set()
        node: Block | None = keep
        while node is not None:
            protected.add(id(node))
            node = node.parent
        while self.bytes + needed > self.budget:
            victim = min(
                (b for b in self._walk() if not b.children and id(b) not in protected),
                key=lambda b: b.used,
                default=None,
            )
            if victim is None:
                return False
            self._evict(victim)
        return True

    def _evict(self, block: Block) -> None:
        assert block.parent is not None
        self._drop(block, block.tokens)
        self.stats.evicted_blocks += 1

    def _drop(self, block: Block, key: tuple[int, ...]) -> None:
        assert block.parent is not None and not block.children
        del block.parent.children[key]
        self._count(-block.kv.nbytes, -1, -len(block.tokens))

    def clear(self) -> None:
        """Forget every block."""
        self._root.children.clear()
        self.stats.bytes = self.stats.blocks = self.stats.tokens = 0

    def resize(self, budget: int) -> None:
        """Change the bound, evicting what no longer fits."""
        self.stats.budget = budget
        self._make_room(0, self._root)

    def _walk(self) -> Iterator[Block]:
        """Every block, parents before children."""
        stack = list(self._root.children.values())
        while stack:
            block = stack.pop()
            yield block
            stack.extend(block.children.values())

    def walk(self) -> Iterator[Block]:
        """Every block, parents before children (for saving)."""
        return self._walk()

    def prefixes(self) -> list[tuple[int, ...]]:
        """Every cached prefix, whole (for tests and reports)."""
        out = []
        for block in self._walk():
            tokens: tuple[int, ...] = ()
            node: Block | None = block
            while node is not None and node.parent is not None:
                tokens = node.tokens + tokens
                node = node.parent
            out.append(tokens)
        return out

    def attach(self, parent: Block | None, tokens: tuple[int, ...], kv: np.ndarray) -> Block | None:
        """Link a block read back from disk under ``parent`` (None: the root), within budget.

        Return it, or None when it does not fit or its place is taken.
        """
        parent = parent or self._root
        if tokens in parent.children or not self._make_room(kv.nbytes, parent):
            return None
        return self._link(parent, tokens, kv)
