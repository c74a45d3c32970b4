"""The prefix cache on the real SmolLM2-135M int4 bundle: hits answer as cold runs do.

A shared system prompt with different questions, and a conversation whose earlier turns come
back in ``messages``: greedy answers with the cache equal those of an engine without one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_runtime.engine import EngineOptions, GenerationRequest, OnnxEngine, load_engine
from edge_runtime.engine.prefix_cache import BLOCK_TOKENS
from edge_runtime.engine.request import Message
from tests.fixtures.prefix import reusable, whole_blocks

SYSTEM = (
    "You are the help desk of a small clinic. Answer in one or two short sentences. "
    "Opening hours are Monday to Friday, eight to six, and Saturday morning. Blood tests "
    "need an appointment and eight hours without food. Vaccinations are on Tuesday and "
    "Thursday afternoons. Bring your insurance card and a list of your medicines. "
    "The pharmacy next door fills prescriptions until seven in the evening. For an "
    "emergency call the emergency number at once; do not come to the desk. Children under "
    "twelve come with an adult. Parking is free behind the building for two hours."
)
QUESTIONS = ["When can I get a flu shot?", "Do I need to fast before a blood test?",
             "Where do I park?"]


def ask(engine: OnnxEngine, messages: list[Message]) -> tuple[str, int]:
    request = GenerationRequest(messages=messages, max_tokens=32, temperature=0.0)
    result = engine.generate(request)
    return result.text, result.usage.cached_tokens


@pytest.fixture(scope="module")
def engines(smollm2_bundle: Callable[..., Path]) -> Iterator[tuple[OnnxEngine, OnnxEngine]]:
    bundle = smollm2_bundle("int4")
    cold = load_engine(bundle, EngineOptions(provider="cpu", threads=2))
    cached = load_engine(bundle, EngineOptions(provider="cpu", threads=2, prefix_cache_mb=32))
    yield cold, cached
    cold.close()
    cached.close()


def test_a_shared_system_prompt_answers_as_cold(
    engines: tuple[OnnxEngine, OnnxEngine],
) -> None:
    cold, cached = engines
    system_tokens = len(cold.encode(GenerationRequest(
        messages=[Message(role="system", content=SYSTEM)])))
    for i, question in enumerate(QUESTIONS):
        messages = [Message(role="system", content=SYSTEM), Message(role="user", content=question)]
        text, cached_tokens = ask(cached, messages)
        assert text == ask(cold, messages)[0]
        if i:
            assert cached_tokens >= reusable(cached, system_tokens - 8), \
                "the system prompt came from the cache"


def test_a_conversation_answers_as_cold_turn_after_turn(
    engines: tuple[OnnxEngine, OnnxEngine],
) -> None:
    cold, cached = engines
    messages = [Message(role="system", content=SYSTEM)]
    asked = 0
    for i, question in enumerate(QUESTIONS):
        messages.append(Message(role="user", content=question))
        text, cached_tokens = ask(cached, messages)
        assert text == ask(cold, messages)[0]
        prompt = len(cold.encode(GenerationRequest(messages=messages)))
        if i:
            # where whole blocks are kept, answers are not read again: the previous prompt's
            # whole blocks come from the cache
            wanted = asked - asked % BLOCK_TOKENS if whole_blocks(cached) else prompt - 30
            assert cached_tokens >= wanted, "only the new turn is read"
        asked = prompt
        messages.append(Message(role="assistant", content=text))
