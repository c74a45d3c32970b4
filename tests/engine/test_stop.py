"""Stop strings are caught across pieces of text and never shown."""

from __future__ import annotations

from edge_runtime.engine.stop import StopMatcher


def feed(matcher: StopMatcher, pieces: list[str]) -> str:
    shown = "".join(matcher.push(p) for p in pieces)
    return shown + matcher.flush()


def test_stop_split_over_many_pieces_is_cut_and_hidden() -> None:
    matcher = StopMatcher(["</answer>"])
    assert feed(matcher, ["The result is 42", "</", "ans", "wer", ">", " extra"]) == (
        "The result is 42"
    )
    assert matcher.stopped
    assert matcher.matched == "</answer>"


def test_text_that_only_looks_like_a_stop_start_is_released() -> None:
    matcher = StopMatcher(["STOP"])
    shown = [matcher.push(p) for p in ["ab", "ST", "O", "x"]]
    assert shown == ["ab", "", "", "STOx"]
    assert not matcher.stopped


def test_held_text_is_released_when_generation_ends_otherwise() -> None:
    matcher = StopMatcher(["\n\nUser:"])
    assert matcher.push("Done.\n\nUs") == "Done."
    assert matcher.flush() == "\n\nUs"


def test_earliest_of_several_stops_wins() -> None:
    matcher = StopMatcher(["world", "lo w"])
    assert feed(matcher, ["hel", "lo wor", "ld"]) == "hel"
    assert matcher.matched == "lo w"


def test_stop_inside_one_piece() -> None:
    matcher = StopMatcher(["###"])
    assert feed(matcher, ["a###b"]) == "a"


def test_no_stops_passes_text_straight_through() -> None:
    matcher = StopMatcher([])
    assert matcher.push("any") == "any"
    assert not matcher.stopped


def test_nothing_is_shown_after_a_stop() -> None:
    matcher = StopMatcher(["x"])
    assert matcher.push("axb") == "a"
    assert matcher.push("more") == ""
    assert matcher.flush() == ""
