"""Tool calls: the grammar that makes a model's calls parse, and the parser that reads them.

OpenAI-style ``tools`` (function schemas) and ``tool_choice`` become a grammar for the
model's own call format. :class:`HermesFormat` is the one Qwen2.5's chat template teaches::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

with further calls after a newline. ``auto`` allows text (or the ``response_format``
JSON) or calls; ``required`` and a named function allow only calls, each a JSON object
whose name is one of the tools (the named one) and whose arguments validate against
that tool's ``parameters``. ``none`` needs no grammar.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_runtime.engine.constraints.grammars import inline_json
from edge_runtime.engine.constraints.limits import ConstraintLimits, check_document
from edge_runtime.errors import BadRequest

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
TOOL_CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class Tool:
    """One function the model may call: its name and the JSON Schema of its arguments."""

    name: str
    parameters: Mapping[str, Any]

    def call_schema(self) -> dict[str, Any]:
        """Return the schema of one call object: ``{"name": <this>, "arguments": {...}}``."""
        return {
            "type": "object",
            "properties": {"name": {"const": self.name}, "arguments": dict(self.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }


@dataclass(frozen=True)
class HermesFormat:
    """Calls wrapped in ``<tool_call>`` lines (Qwen2.5, Hermes and their kin)."""

    open: str = "<tool_call>"
    close: str = "</tool_call>"

    def marker(self, text: str, special: bool) -> str:
        """Return a marker as a grammar term: a special token, or a literal string."""
        return text if special else json.dumps(text)

    def grammar(
        self,
        tools: Sequence[Tool],
        *,
        free_text: bool,
        content: Mapping[str, Any] | None,
        parallel: bool,
        special: bool,
    ) -> str:
        """Return the Lark grammar for calls to ``tools``, optionally instead of content.

        ``free_text``: any text that holds no opening marker may come before the calls, or
        stand alone; ``content``: a JSON Schema the answer may follow instead of calling.
        """
        open_, close = self.marker(self.open, special), self.marker(self.close, special)
        body = f'"\\n" ({" | ".join(f"fn{i}" for i in range(len(tools)))}) "\\n" {close}'
        more = ' ("\\n" call)*' if parallel else ""
        rules = [
            f"call: {open_} {body}",
            *(f"fn{i}: {inline_json(tool.call_schema())}" for i, tool in enumerate(tools)),
        ]
        if content is not None:
            rules += [f"start: content | call{more}", f"content: {inline_json(content)}"]
        elif free_text:
            # Text may not spell out the opening marker: every call goes through the grammar.
            rules.append(f"TEXT: /(?s:.+)/ & ~/(?s:.*){re.escape(self.open)}(?s:.*)/")
            if special:
                rules.append(f"start: TEXT | TEXT? call{more}")
            else:  # the text lexeme cannot give way to a marker it holds: end it lazily
                rules.append(f"start: TEXT | head {body}{more}")
                rules.append(f"head[lazy]: /(?s:.*){re.escape(self.open)}/")
        else:
            rules.append(f"start: call{more}")
        return "\n".join(rules) + "\n"

    def parse(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """Split ``text`` into content and OpenAI-shaped calls; see :func:`parse_tool_calls`."""
        pattern = re.compile(re.escape(self.open) + r"\s*(.*?)\s*" + re.escape(self.close), re.S)
        calls: list[dict[str, Any]] = []
        pieces: list[str] = []
        last = 0
        for match in pattern.finditer(text):
            call = _call(match.group(1))
            if call is None:
                continue
            pieces.append(text[last : match.start()])
            last = match.end()
            calls.append(call)
        pieces.append(text[last:])
        return "".join(pieces).strip(), calls


HERMES = HermesFormat()


def _call(body: str) -> dict[str, Any] | None:
    """Return the OpenAI ``tool_calls`` entry for one call's JSON, None if it is not one."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", {})
    if isinstance(arguments, str):  # some models quote the arguments object
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": data["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def parse_tool_calls(
    text: str, fmt: HermesFormat = HERMES
) -> tuple[str, list[dict[str, Any]]]:
    """Return the text outside the calls and the calls in OpenAI's ``tool_calls`` shape.

    ``text`` must still hold the markers (decode with special tokens kept). A block that
    does not parse as a call (cut off by ``max_tokens``, say) stays in the content.
    """
    return fmt.parse(text)


def read_tools(tools: object, limits: ConstraintLimits) -> list[Tool]:
    """Return the functions of an OpenAI ``tools`` list, or raise BadRequest naming the fault."""
    if not isinstance(tools, list) or not tools:
        raise BadRequest("tools must be a non-empty list")
    if len(tools) > limits.max_tools:
        raise BadRequest(f"{len(tools)} tools; the limit is {limits.max_tools}")
    check_document("tools", tools, limits)
    read: list[Tool] = []
    for index, entry in enumerate(tools):
        tool = _read_tool(index, entry)
        if any(seen.name == tool.name for seen in read):
            raise BadRequest(f'tools[{index}]: the name "{tool.name}" is used twice')
        read.append(tool)
    return read


def _read_tool(index: int, entry: object) -> Tool:
    where = f"tools[{index}]"
    if not isinstance(entry, Mapping) or entry.get("type", "function") != "function":
        raise BadRequest(f'{where} must be {{"type": "function", "function": {{...}}}}')
    function = entry.get("function")
    if not isinstance(function, Mapping):
        raise BadRequest(f'{where} has no "function" object')
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest(f"{where}.function.name must be 1-64 letters, digits, _ or -")
    parameters = function.get("parameters", _EMPTY_PARAMETERS)
    if not isinstance(parameters, Mapping):
        raise BadRequest(f'{where}: the parameters of "{name}" must be a JSON Schema object')
    return Tool(name, parameters)


def chosen_tools(tools: list[Tool], tool_choice: object) -> tuple[list[Tool], bool] | None:
    """Return the tools the answer may call and whether text may stand instead; None: no calls.

    ``tool_choice`` is "auto" (the default), "none", "required", or
    ``{"type": "function", "function": {"name": ...}}``.
    """
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        return tools, choice == "auto"
    name = _named_choice(choice)
    named = [tool for tool in tools if tool.name == name]
    if not named:
        raise BadRequest(f'tool_choice names "{name}", which is not among the tools')
    return named, False


def _named_choice(choice: object) -> str:
    function = choice.get("function") if isinstance(choice, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(choice, Mapping) or choice.get("type") != "function" or not name:
        raise BadRequest(
            'tool_choice must be "auto", "none", "required" or '
            '{"type": "function", "function": {"name": ...}}'
        )
    return str(name)


__all__ = [
    "HERMES",
    "TOOL_CHOICES",
    "HermesFormat",
    "Tool",
    "chosen_tools",
    "parse_tool_calls",
    "read_tools",
]
