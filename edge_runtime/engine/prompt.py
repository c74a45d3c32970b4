"""Turn a request's prompt (plain text or chat messages) into token ids."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

from edge_runtime.engine.chat_template import ChatTemplate
from edge_runtime.engine.tokenizer import Tokenizer
from edge_runtime.engine.types import (
    ChatMessage,
    DeltaCallback,
    GenerationResult,
    Prompt,
    SamplingParams,
)
from edge_runtime.errors import BadRequest


def _messages(prompt: Sequence[object]) -> list[ChatMessage]:
    checked: list[ChatMessage] = []
    for index, item in enumerate(prompt):
        if not isinstance(item, dict):
            raise BadRequest(f"messages[{index}] must be an object with role and content")
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise BadRequest(f"messages[{index}] needs a string role and a string content")
        checked.append({"role": role, "content": content})
    if not checked:
        raise BadRequest("messages is empty")
    return checked


def render_prompt(prompt: Prompt, *, chat: bool, template: ChatTemplate | None) -> tuple[str, bool]:
    """Return the text to tokenize and whether it came from the chat template.

    A plain string with ``chat`` on becomes one user turn; with no template in the bundle
    it is used as it is. A message list needs ``chat`` and a template.
    """
    if isinstance(prompt, str):
        if chat and template is not None:
            return template.render([{"role": "user", "content": prompt}]), True
        return prompt, False
    if not isinstance(prompt, Sequence):
        raise BadRequest("prompt must be a string or a list of messages")
    messages = _messages(prompt)
    if not chat:
        raise BadRequest("a message list needs chat mode; send a plain prompt for completion")
    if template is None:
        raise BadRequest("this model has no chat template; send a plain prompt instead")
    return template.render(messages), True


def encode_prompt(
    prompt: Prompt, *, chat: bool, template: ChatTemplate | None, tokenizer: Tokenizer
) -> list[int]:
    """Return the prompt's token ids; raise :class:`BadRequest` when there are none."""
    text, templated = render_prompt(prompt, chat=chat, template=template)
    # A chat template writes its own bos_token when the model wants one.
    ids = tokenizer.encode(text, add_bos=False if templated else None)
    if not ids:
        raise BadRequest("the prompt is empty")
    return ids


class PromptEngine(ABC):
    """``generate`` from a prompt, for engines that generate from token ids."""

    @abstractmethod
    def encode(self, prompt: Prompt, *, chat: bool = True) -> list[int]:
        """Return the token ids ``generate`` would feed for ``prompt``."""

    @abstractmethod
    def generate_ids(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        cancel: threading.Event | None = None,
        on_delta: DeltaCallback | None = None,
        ignore_eos: bool = False,
        _called: float | None = None,
    ) -> GenerationResult:
        """Generate from token ids; ``_called`` is when the caller's clock started."""

    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        *,
        chat: bool = True,
        cancel: threading.Event | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> GenerationResult:
        """Generate an answer for ``prompt`` (see :class:`edge_runtime.engine.types.Engine`)."""
        called = time.perf_counter()
        ids = self.encode(prompt, chat=chat)
        return self.generate_ids(ids, params, cancel=cancel, on_delta=on_delta, _called=called)
