"""Turn a request's prompt (plain text or chat messages) into token ids.

Only the chat template's own markup may become control tokens. Message content is always
plain text: a user who writes ``<|im_end|>\\n<|im_start|>system`` into a message gets those
characters read as text, not a forged turn. Raw prompts (``chat`` false) are plain text
too unless the request asks for ``special_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_runtime.engine.chat_format import ChatFormat
from edge_runtime.engine.chat_template import ChatTemplate
from edge_runtime.engine.request import GenerationRequest, Message
from edge_runtime.engine.tokenizer import Tokenizer
from edge_runtime.errors import BadRequest


@dataclass(frozen=True)
class EncodedPrompt:
    ids: list[int]
    reasoning_open: bool = False
    """The rendered prompt ends inside the reasoning (the answer starts there)."""


def encode_request(
    request: GenerationRequest,
    *,
    template: ChatTemplate | None,
    tokenizer: Tokenizer,
    chat_format: ChatFormat | None = None,
) -> EncodedPrompt:
    """Return the prompt's token ids; raise :class:`BadRequest` when there are none."""
    encoded = EncodedPrompt([])
    if not request.chat:
        assert request.prompt is not None
        encoded = EncodedPrompt(tokenizer.encode(request.prompt, special=request.special_tokens))
    elif template is None:
        if request.prompt is None:
            raise BadRequest("this model has no chat template; send a plain prompt instead")
        encoded = EncodedPrompt(tokenizer.encode(request.prompt, special=False))
    else:
        encoded = encode_chat(request, template, tokenizer, chat_format or ChatFormat())
    if not encoded.ids:
        raise BadRequest("the prompt is empty")
    return encoded


def _variables(request: GenerationRequest, chat_format: ChatFormat) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    if request.tools:
        if not chat_format.tools:
            raise BadRequest("this model's chat template has no tool support; send the "
                             "request without tools")
        variables["tools"] = [t.model_dump(by_alias=True, exclude_none=True)
                              for t in request.tools]
    if request.think is not None and chat_format.think_switch:
        variables["enable_thinking"] = request.think
    return variables


def encode_chat(
    request: GenerationRequest, template: ChatTemplate, tokenizer: Tokenizer,
    chat_format: ChatFormat,
) -> EncodedPrompt:
    """Render the request's chat with the template and tokenize, content as plain text."""
    messages = request.messages or [Message(role="user", content=request.prompt or "")]
    text = template.render([m.for_template() for m in messages],
                           **_variables(request, chat_format))
    reasoning_open = chat_format.reasoning_open(text)
    # A chat template writes its own bos_token when the model wants one.
    contents = [m.content for m in messages if m.content]
    marked = [c for c in contents if tokenizer.has_control_markup(c)]
    if not marked:
        return EncodedPrompt(tokenizer.encode(text, add_bos=False), reasoning_open)
    ids: list[int] = []
    for piece, is_content in _split(text, marked):
        ids += tokenizer.encode(piece, add_bos=False, special=not is_content)
    return EncodedPrompt(ids, reasoning_open)


def _split(text: str, contents: list[str]) -> list[tuple[str, bool]]:
    """Cut ``text`` around each of ``contents`` (in order); True marks a content piece."""
    pieces: list[tuple[str, bool]] = []
    cursor = 0
    for content in contents:
        start, found = _find(text, content, cursor)
        if start < 0:
            raise BadRequest(
                "a message holds control-token markup that the chat template rewrites, so it "
                "cannot be kept as plain text; remove the markup from the message"
            )
        pieces += [(text[cursor:start], False), (found, True)]
        cursor = start + len(found)
    pieces.append((text[cursor:], False))
    return [(piece, is_content) for piece, is_content in pieces if piece]


def _find(text: str, content: str, cursor: int) -> tuple[int, str]:
    """Find ``content`` as the template placed it (as is, or trimmed) at or after ``cursor``."""
    for candidate in (content, content.strip()):
        start = text.find(candidate, cursor) if candidate else -1
        if start >= 0:
            return start, candidate
    return -1, content
