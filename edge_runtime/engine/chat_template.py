"""Render a bundle's chat template in a sandbox.

The template comes with the model, so it is treated as untrusted: it runs in Jinja's
``ImmutableSandboxedEnvironment``, which refuses attribute access to internals (no
``__class__``/``__globals__`` walks), calls to unsafe callables and in-place mutation of
values passed in. The variables offered are the usual Hugging Face ones: ``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token`` and ``raise_exception``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.exceptions import SecurityError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edge_runtime.errors import BadRequest, BundleError


class TemplateRaised(BadRequest):
    """The chat template refused the conversation (its ``raise_exception`` was called)."""


def _raise_exception(message: str) -> NoReturn:
    raise TemplateRaised(f"the chat template refused this conversation: {message}")


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], autoescape=False
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template with the model's special-token strings."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        try:
            self._template = _environment().from_string(source)
        except TemplateError as exc:
            raise BundleError(f"chat template does not compile ({exc})") from exc
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def mentions(self, name: str) -> bool:
        """Whether the template's source reads ``name`` (a variable, a marker)."""
        return name in self.source

    @classmethod
    def from_file(cls, path: Path, *, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"cannot read chat template ({exc})", path) from exc
        return cls(source, bos_token=bos_token, eos_token=eos_token)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> str:
        """Return the prompt text for ``messages``; ``variables`` go to the template too.

        ``tools`` (OpenAI function schemas) and ``enable_thinking`` are the variables Hugging
        Face templates read. Raises :class:`BadRequest` when the template refuses the
        messages, and :class:`BundleError` when the template itself breaks (or tries to
        escape the sandbox).
        """
        plain = [dict(m) for m in messages]
        try:
            return self._template.render(
                messages=plain,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **variables,
            )
        except BadRequest:
            raise
        except SecurityError as exc:
            raise BundleError(f"chat template tried an unsafe operation ({exc})") from exc
        except (TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
            raise BundleError(f"chat template failed ({type(exc).__name__}: {exc})") from exc
