"""The one request model: what to generate, as a client sends it.

:class:`GenerationRequest` is the engine's argument. The service's wire format
(``edge_runtime.service.protocol.RequestBody``) extends it with the fields only the service
reads (id, stream, reply place, deadline), and its durable record is that body as JSON, so a
value keeps one form from the MQTT payload to the sampler. Bounds live here and only here;
the published JSON Schemas are generated from these classes (``edge-runtime schemas``).

``None`` means "the bundle's default": :func:`edge_runtime.engine.defaults.resolve` decides.
"""

from __future__ import annotations

import json
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


FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionCall(StrictModel):
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: Text = Field(description="The arguments as a JSON object, in a string.")


class ToolCall(StrictModel):
    """A call the model made, as the final reports it (and as a client sends it back)."""

    id: str = Field(min_length=1, max_length=64)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(StrictModel):
    """One turn of a chat."""

    role: Literal["system", "user", "assistant", "tool"]
    content: Text | None = Field(default=None, max_length=MAX_CONTENT_CHARS)
    tool_calls: list[ToolCall] | None = Field(
        default=None, max_length=16, description="An assistant turn's calls (from a final)."
    )
    tool_call_id: str | None = Field(
        default=None, max_length=64, description="A tool turn: the call it answers."
    )

    @model_validator(mode="after")
    def _check(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (null only for an assistant's tool calls)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant turn carries tool_calls")
        return self

    @property
    def text_bytes(self) -> int:
        """The size of the content and call arguments in UTF-8."""
        calls = sum(len(c.function.arguments.encode("utf-8")) for c in self.tool_calls or ())
        return len((self.content or "").encode("utf-8")) + calls

    def for_template(self) -> dict[str, Any]:
        """Return the message as chat templates expect it (call arguments as objects)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": c.type,
                 "function": {"name": c.function.name, "arguments": _object(c.function.arguments)}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def _object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


class JsonSchemaFormat(StrictModel):
    name: str = Field(default="answer", pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema to follow.")
    strict: bool = True


class ResponseFormat(StrictModel):
    """OpenAI's ``response_format``: free text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('json_schema goes with type "json_schema" and only with it')
        return self


class Grammar(StrictModel):
    """A grammar the answer must follow: llguidance's Lark dialect, or a whole-match regex."""

    type: Literal["lark", "regex"]
    grammar: str = Field(min_length=1)


class FunctionDef(StrictModel):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="The JSON Schema of the arguments object."
    )
    strict: bool | None = None


class ToolDef(StrictModel):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(StrictModel):
    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: FunctionName


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
    response_format: ResponseFormat | None = Field(
        default=None, description="JSON (any object, or following a schema), enforced while "
        "decoding.",
    )
    grammar: Grammar | None = Field(default=None, description="A grammar enforced while decoding.")
    tools: list[ToolDef] | None = Field(default=None, min_length=1, max_length=64)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = Field(
        default=None, description='Default "auto" when tools are given.'
    )
    parallel_tool_calls: bool = True
    think: bool | None = Field(
        default=None,
        description="Reasoning models: false asks the chat template for no reasoning (where it "
        "has that switch); null keeps the model's default.",
    )
    max_reasoning_tokens: int | None = Field(
        default=None, ge=0, description="Reasoning models: end the reasoning after this many "
        "tokens and go on with the answer.",
    )
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
        if (self.tools or self.tool_choice is not None) and not self.chat:
            raise ValueError("tools need chat mode")
        if self.tool_choice is not None and not self.tools:
            raise ValueError("tool_choice needs tools")
        if self.constrained and self.stop:
            raise ValueError("stop cannot be combined with response_format, grammar or tools: "
                             "the grammar decides where the answer ends")
        return self

    @property
    def constrained(self) -> bool:
        """Whether the answer's form is enforced while decoding."""
        wants_json = self.response_format is not None and self.response_format.type != "text"
        calls = self.tools is not None and self.tool_choice != "none"
        return wants_json or self.grammar is not None or calls

    @property
    def prompt_bytes(self) -> int:
        """The size of the prompt text (or of all message contents) in UTF-8."""
        if self.prompt is not None:
            return len(self.prompt.encode("utf-8"))
        return sum(m.text_bytes for m in self.messages or ())


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
