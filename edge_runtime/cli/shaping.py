"""Command-line flags that shape an answer: a JSON Schema, a grammar, tools (run and ask)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge_runtime.errors import BadRequest


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("answer shape (enforced while decoding)")
    form = group.add_mutually_exclusive_group()
    form.add_argument("--json-schema", type=Path, metavar="FILE",
                      help="answer with JSON that follows this JSON Schema")
    form.add_argument("--json-object", action="store_true", help="answer with a JSON object")
    form.add_argument("--grammar", type=Path, metavar="FILE",
                      help="answer following this grammar (llguidance's Lark dialect)")
    form.add_argument("--regex", metavar="PATTERN", help="answer matching this whole regex")
    group.add_argument("--tools", type=Path, metavar="FILE",
                       help="a JSON list of OpenAI function tools the model may call")
    group.add_argument("--tool-choice", metavar="CHOICE",
                       help='"auto" (default), "none", "required" or a function name')


def _json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadRequest(f"{what}: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise BadRequest(f"{what}: {path} is not JSON: {exc}") from None


def shape_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Return the request fields the shape flags set."""
    fields: dict[str, Any] = {}
    if args.json_schema is not None:
        schema = _json_file(args.json_schema, "--json-schema")
        fields["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": schema}}
    elif args.json_object:
        fields["response_format"] = {"type": "json_object"}
    elif args.grammar is not None:
        try:
            text = args.grammar.read_text(encoding="utf-8")
        except OSError as exc:
            raise BadRequest(f"--grammar: cannot read {args.grammar}: {exc.strerror}") from None
        fields["grammar"] = {"type": "lark", "grammar": text}
    elif args.regex is not None:
        fields["grammar"] = {"type": "regex", "grammar": args.regex}
    if args.tools is not None:
        fields["tools"] = _json_file(args.tools, "--tools")
    if args.tool_choice is not None:
        choice = args.tool_choice
        fields["tool_choice"] = choice if choice in ("auto", "none", "required") else {
            "type": "function", "function": {"name": choice}}
    return fields
