"""What one bundle's chat format offers: reasoning markers, a thinking switch, tool calls.

Read once at load from the chat template and the tokenizer. Reasoning models' templates
(DeepSeek-R1 distills, Qwen3) speak of ``</think>``; Qwen3's also has an ``enable_thinking``
switch; templates with tool support read a ``tools`` variable and teach the model to
answer with ``<tool_call>`` blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_runtime.engine.channels import Markers
from edge_runtime.engine.chat_template import ChatTemplate
from edge_runtime.engine.constraints import HERMES
from edge_runtime.engine.tokenizer import Tokenizer

THINK = ("<think>", "</think>")


@dataclass(frozen=True)
class ChatFormat:
    """The markers and switches of one bundle's chat format."""

    markers: Markers = field(default_factory=Markers)
    think_switch: bool = False
    tools: bool = False
    marker_texts: dict[int, str] = field(default_factory=dict)
    """Marker tokens the detokenizer leaves out (special ones), with their text."""
    close_reasoning: tuple[int, ...] = ()

    @classmethod
    def detect(cls, template: ChatTemplate | None, tokenizer: Tokenizer) -> ChatFormat:
        if template is None:
            return cls()
        think = THINK if template.mentions(THINK[1]) else None
        tools = template.mentions("tools") and template.mentions(HERMES.open)
        markers = Markers(think=think, tool_call=HERMES.open if tools else None)
        texts = [*(think or ()), *((HERMES.open, HERMES.close) if tools else ())]
        return cls(
            markers=markers,
            think_switch=think is not None and template.mentions("enable_thinking"),
            tools=tools,
            marker_texts=_special_markers(tokenizer, texts),
            close_reasoning=tuple(tokenizer.encode("\n" + THINK[1] + "\n\n", add_bos=False))
            if think else (),
        )

    def reasoning_open(self, rendered: str) -> bool:
        """Whether a rendered prompt leaves the reasoning open (R1's ends with ``<think>``)."""
        if self.markers.think is None:
            return False
        opened, closed = (rendered.rfind(m) for m in self.markers.think)
        return opened > closed


def _special_markers(tokenizer: Tokenizer, texts: list[str]) -> dict[int, str]:
    """Return the markers that are single control tokens (decoding leaves those out)."""
    found = {}
    for text in texts:
        ids = tokenizer.encode(text, add_bos=False)
        if len(ids) == 1 and ids[0] in tokenizer.control_ids:
            found[ids[0]] = text
    return found
