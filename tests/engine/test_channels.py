"""Reasoning and tool-call markers found across token boundaries (no model)."""

from __future__ import annotations

import pytest

from edge_runtime.engine.channels import Channels, Markers

THINK = Markers(think=("<think>", "</think>"), tool_call="<tool_call>")


def run(channels: Channels, pieces: list[str]) -> tuple[str, str]:
    answer, reasoning = [], []
    for piece in [*pieces, None]:
        got = channels.flush() if piece is None else channels.push(piece)
        answer.append(got.text)
        reasoning.append(got.reasoning)
    return "".join(answer), "".join(reasoning)


@pytest.mark.parametrize("cut", range(1, 30))
def test_markers_split_anywhere_are_found(cut: int) -> None:
    text = "<think>\nwhy not</think>\n\nBecause."
    assert run(Channels(THINK), [text[:cut], text[cut:]]) == ("Because.", "why not")


def test_reasoning_opened_by_the_prompt() -> None:
    assert run(Channels(THINK, reasoning=True), ["a", "b</th", "ink>c"]) == ("c", "ab")


def test_text_that_only_looks_like_a_marker_is_released() -> None:
    assert run(Channels(THINK), ["a <thin", "g> b <tool"]) == ("a <thing> b <tool", "")


def test_tool_calls_are_held_with_their_marker() -> None:
    channels = Channels(THINK)
    assert run(channels, ["Sure. <tool", '_call>\n{"name": "f"}']) == ("Sure. ", "")
    assert channels.held == '<tool_call>\n{"name": "f"}'


def test_a_model_without_markers_streams_everything() -> None:
    assert run(Channels(Markers()), ["<think>x</think>"]) == ("<think>x</think>", "")
