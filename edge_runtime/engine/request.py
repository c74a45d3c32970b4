"""The one request model: what to generate, as a client sends it.

:class:`GenerationRequest` is the engine's argument. The service's wire format
(``edge_runtime.service.protocol.RequestBody``) extends it with the fields only the service
reads (id, stream, reply place, deadline), and its durable record is that body as JSON, so a
value keeps one form from the MQTT payload to the sampler. Bounds live here and only here;
the published JSON Schemas are generated from these classes (``edge-runtime schemas``).

``None`` means "the bundle's default": :func:`edge_runtime.engine.defaults.resolve` decides.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from edge_runtime.errors import BadRequest

MAX_MESSAGES = 256
MAX_CONTENT_CHARS = 1_000_000
MAX_STOPS = 16
MAX_STOP_CHARS = 64


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode text (a lone surrogate at {exc.start})") from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]
"""A string that can be encoded as UTF-8 (JSON can carry lone surrogates; text cannot)."""


class StrictModel(BaseModel):
    """Unknown fields refused, types strict (``"5"`` is not a number), no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class Message(StrictModel):
    """One turn of a chat."""

    role: Literal["system", "user", "assistant"]
    content: Text = Field(max_length=MAX_CONTENT_CHARS)


def _one_prompt(schema: dict[str, Any]) -> None:
    schema["oneOf"] = [
        {"required": ["prompt"], "not": {"required": ["messages"]}},
        {"required": ["messages"], "not": {"required": ["prompt"]}},
    ]


class Sampling(StrictModel):
    """How to pick tokens and when to stop."""

    max_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens to generate (a service caps it)."
    )
    temperature: float | None = Field(
        default=None, ge=0, le=5,
        description="0 is greedy; values too small to sample with act as greedy.",
    )
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=1_000_000, description="0 is off.")
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[Text] = Field(
        default_factory=list, max_length=MAX_STOPS,
        description="Generation ends before the first of these strings.",
    )

    @model_validator(mode="after")
    def _check_stops(self) -> Sampling:
        if any(not 0 < len(s) <= MAX_STOP_CHARS for s in self.stop):
            raise ValueError(f"stop: each entry must be 1-{MAX_STOP_CHARS} characters")
        return self


class GenerationRequest(Sampling):
    """A prompt (or chat) and how to answer it."""

    model_config = ConfigDict(json_schema_extra=_one_prompt)

    prompt: Text | None = Field(
        default=None, min_length=1,
        description="One user turn (chat true) or raw text (chat false).",
    )
    messages: list[Message] | None = Field(
        default=None, min_length=1, max_length=MAX_MESSAGES, description="A chat, oldest first."
    )
    chat: bool = Field(default=True, description="Render the bundle's chat template.")
    special_tokens: bool = Field(
        default=False,
        description="Raw mode (chat false) only: control-token markup in the prompt, such as "
        "<|im_start|>, becomes control tokens. Otherwise all text is plain text.",
    )

    @model_validator(mode="after")
    def _check(self) -> GenerationRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        if self.messages is not None and not self.chat:
            raise ValueError("messages need chat mode; send a plain prompt for completion")
        if self.special_tokens and self.chat:
            raise ValueError("special_tokens is for raw prompts (chat false) only")
        return self

    @property
    def prompt_bytes(self) -> int:
        """The size of the prompt text (or of all message contents) in UTF-8."""
        if self.prompt is not None:
            return len(self.prompt.encode("utf-8"))
        return sum(len(m.content.encode("utf-8")) for m in self.messages or ())


def first_problem(exc: ValidationError) -> str:
    """Describe the first fault pydantic found, as one line naming the field."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"]) or "request"
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return msg if loc == "request" or msg.startswith(f"{loc}:") else f"{loc}: {msg}"


def parse_request(data: object) -> GenerationRequest:
    """Validate ``data`` (a decoded JSON object or keyword dict); BadRequest when it fails."""
    try:
        return GenerationRequest.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(first_problem(exc)) from None
