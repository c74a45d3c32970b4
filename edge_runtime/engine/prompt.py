"""Turn a request's prompt (plain text or chat messages) into token ids.

Only the chat template's own markup may become control tokens. Message content is always
plain text: a user who writes ``<|im_end|>\\n<|im_start|>system`` into a message gets those
characters read as text, not a forged turn. Raw prompts (``chat`` false) are plain text
too unless the request asks for ``special_tokens``.
"""

from __future__ import annotations

from edge_runtime.engine.chat_template import ChatTemplate
from edge_runtime.engine.request import GenerationRequest, Message
from edge_runtime.engine.tokenizer import Tokenizer
from edge_runtime.errors import BadRequest


def encode_request(
    request: GenerationRequest, *, template: ChatTemplate | None, tokenizer: Tokenizer
) -> list[int]:
    """Return the prompt's token ids; raise :class:`BadRequest` when there are none."""
    if not request.chat:
        assert request.prompt is not None
        ids = tokenizer.encode(request.prompt, special=request.special_tokens)
    elif template is None:
        if request.prompt is None:
            raise BadRequest("this model has no chat template; send a plain prompt instead")
        ids = tokenizer.encode(request.prompt, special=False)
    else:
        messages = request.messages or [Message(role="user", content=request.prompt or "")]
        ids = encode_chat(messages, template, tokenizer)
    if not ids:
        raise BadRequest("the prompt is empty")
    return ids


def encode_chat(messages: list[Message], template: ChatTemplate, tokenizer: Tokenizer) -> list[int]:
    """Render ``messages`` with the template and tokenize, content as plain text."""
    text = template.render([m.model_dump() for m in messages])
    # A chat template writes its own bos_token when the model wants one.
    marked = [m.content for m in messages if tokenizer.has_control_markup(m.content)]
    if not marked:
        return tokenizer.encode(text, add_bos=False)
    ids: list[int] = []
    for piece, is_content in _split(text, marked):
        ids += tokenizer.encode(piece, add_bos=False, special=not is_content)
    return ids


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
