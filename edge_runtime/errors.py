"""The exception tree. Each class carries the stable error code that the protocol reports.

Callers map errors to replies by class (``err.code``), never by message text.
"""

from __future__ import annotations

from pathlib import Path


class EdgeRuntimeError(Exception):
    """Base of every error edge-runtime raises on purpose."""

    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(EdgeRuntimeError):
    """The request is malformed or asks for something impossible."""

    code = "bad_request"


class ContextLengthExceeded(BadRequest):
    """The prompt (plus what must be generated) does not fit the model's context."""

    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, limit: int, message: str | None = None) -> None:
        super().__init__(
            message
            or f"prompt is {prompt_tokens} tokens; the model's context holds {limit}"
        )
        self.prompt_tokens = prompt_tokens
        self.limit = limit


class Busy(EdgeRuntimeError):
    """The request queue is full; try again later."""

    code = "busy"


class Expired(EdgeRuntimeError):
    """The request's deadline or message expiry passed before it could be served."""

    code = "expired"


class ModelUnavailable(EdgeRuntimeError):
    """The model named is unknown, or could not be loaded."""

    code = "model_unavailable"


class ShuttingDown(EdgeRuntimeError):
    """The daemon is stopping and takes no more work."""

    code = "shutting_down"


class InternalError(EdgeRuntimeError):
    """Something failed that is not the requester's fault."""

    code = "internal"


class BundleError(ModelUnavailable):
    """A bundle is missing, malformed or tampered with; ``path`` names the file at fault."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message if path is None else f"{path}: {message}")
        self.path = None if path is None else Path(path)


class ConfigError(EdgeRuntimeError):
    """The configuration is invalid; ``problems`` holds one line per fault."""

    code = "internal"

    def __init__(self, problems: list[str] | str) -> None:
        lines = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(lines))
        self.problems = lines


class ProviderUnavailable(ModelUnavailable):
    """An execution provider was required by the config but is not available here."""


_FOREIGN_MESSAGE_CHARS = 300


def as_error(exc: BaseException, context: str) -> EdgeRuntimeError:
    """Map any exception to ours: our own pass through, the rest become ``internal``.

    The one place where errors from libraries (onnxruntime, numpy, tokenizers) get a code.
    """
    if isinstance(exc, EdgeRuntimeError):
        return exc
    detail = str(exc)[:_FOREIGN_MESSAGE_CHARS]
    return InternalError(f"{context}: {type(exc).__name__}{': ' + detail if detail else ''}")


def error_codes() -> tuple[str, ...]:
    """Return every code an error reply can carry, in the order the classes are declared."""
    codes: list[str] = []
    pending: list[type[EdgeRuntimeError]] = [EdgeRuntimeError]
    while pending:
        cls = pending.pop(0)
        if cls.code not in codes:
            codes.append(cls.code)
        pending += cls.__subclasses__()
    return tuple(codes)
