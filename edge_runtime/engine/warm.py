"""Warm prompts: read system prompts into the prefix cache before the first request.

A system prompt is cached as the tokens every chat request with that system prompt starts
with: the bundle's chat template renders it with two different user turns, and the tokens
the two renders share are read. A bundle without a template reads the text as it is.
"""

from __future__ import annotations

import logging

from edge_runtime.engine.engine import OnnxEngine
from edge_runtime.engine.request import GenerationRequest, Message, Sampling
from edge_runtime.errors import EdgeRuntimeError

log = logging.getLogger(__name__)


def system_prefix(engine: OnnxEngine, system: str) -> list[int]:
    """Return the tokens that every chat request with this system prompt starts with."""
    if engine.template is None:
        return engine.encode(GenerationRequest(prompt=system, chat=False))
    renders = [
        engine.encode(GenerationRequest(messages=[
            Message(role="system", content=system), Message(role="user", content=user)]))
        for user in ("a", "b")
    ]
    shared = 0
    for x, y in zip(*renders, strict=False):
        if x != y:
            break
        shared += 1
    return renders[0][:shared]


def warm(engine: OnnxEngine, systems: list[str]) -> int:
    """Read each system prompt into the prefix cache; return how many tokens were read."""
    if engine.prefix_cache is None:
        if systems:
            log.warning("warm prompts ignored: this engine has no prefix cache")
        return 0
    read = 0
    for system in systems:
        ids = system_prefix(engine, system)
        if not ids:
            continue
        try:
            result = engine.generate_ids(ids, Sampling(max_tokens=1, temperature=0.0))
        except EdgeRuntimeError as exc:
            log.warning("warm prompt of %d tokens not read: %s", len(ids), exc.message)
            continue
        read += result.usage.prompt_tokens - result.usage.cached_tokens
    return read
