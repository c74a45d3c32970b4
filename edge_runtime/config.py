"""The daemon's one typed configuration, loaded from TOML and validated at start-up.

Unknown keys and bad values are refused with one line each (``broker.keepalive: ...``).
Secrets (broker password, TLS key) are read from files only; a relative file name is looked
up in ``$CREDENTIALS_DIRECTORY`` (systemd credentials) first.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_runtime.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/edge-runtime/config.toml")
DEFAULT_STATE_DIR = Path("/var/lib/edge-runtime")
TOPIC_SEGMENT_FORBIDDEN = set("/+#$\0")


def _to_path(value: Any) -> Any:
    return Path(value) if isinstance(value, str) and value else value


FilePath = Annotated[Path, BeforeValidator(_to_path)]
"""A path given as a TOML string (strict mode otherwise wants a Path object)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TlsConfig(_Strict):
    """TLS towards the broker; the server certificate is always verified."""

    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class BrokerConfig(_Strict):
    url: str = "mqtt://127.0.0.1:1883"
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password_file: FilePath | None = None
    tls: TlsConfig = Field(default_factory=TlsConfig)
    keepalive: int = Field(default=30, ge=5, le=3600)
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    session_expiry_s: int = Field(default=86400, ge=0, le=4_294_967_295)
    reconnect_min_s: float = Field(default=1.0, gt=0, le=60)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    takeover_backoff_s: float = Field(default=30.0, ge=1, le=3600)
    takeover_backoff_max_s: float = Field(default=900.0, ge=1, le=86400)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError("must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("names no host")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use username and password_file")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def uses_tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def password(self) -> str | None:
        """Read the password from its file (or systemd credential), without the trailing newline."""
        if self.password_file is None:
            return None
        return resolve_secret(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")


class ServiceConfig(_Strict):
    device_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    topic_prefix: str = Field(default="edge", min_length=1, max_length=64)
    queue_size: int = Field(default=16, ge=1, le=10_000)
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_prompt_bytes: int = Field(default=64 * 1024, ge=16, le=16 * 1024 * 1024)
    default_max_tokens: int = Field(default=256, ge=1, le=1_000_000)
    max_max_tokens: int = Field(default=2048, ge=1, le=1_000_000)
    generation_deadline_s: float = Field(default=300.0, gt=0, le=86400)
    state_dir: FilePath = Field(default_factory=lambda: default_state_dir())
    outbox_limit: int = Field(default=1000, ge=16, le=1_000_000)
    record_ttl_s: float = Field(default=86400.0, ge=0)
    stats_interval_s: float = Field(default=30.0, ge=0.5, le=86400)
    shutdown_grace_s: float = Field(default=10.0, ge=0, le=600)
    shared_group: str | None = Field(default=None, min_length=1, max_length=64)
    reply_topic_pattern: str | None = Field(default=None, min_length=1, max_length=256)
    max_state_bytes: int = Field(default=32 * 1024 * 1024, ge=1024 * 1024, le=1 << 40)

    @field_validator("reply_topic_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is None:
            return value
        levels = value.split("/")
        if value.startswith("$") or "\0" in value or not value.isprintable():
            raise ValueError("must be a printable topic pattern not starting with $")
        if "#" in levels[:-1] or any("#" in lv and lv != "#" for lv in levels):
            raise ValueError("# may only be the whole last level")
        if any("+" in lv and lv != "+" for lv in levels):
            raise ValueError("+ must be a whole level")
        if value.replace("%u", "").replace("%c", "").count("%"):
            raise ValueError("% may only start %u or %c")
        return value

    @field_validator("device_id", "topic_prefix", "shared_group")
    @classmethod
    def _segment(cls, value: str | None) -> str | None:
        if value is not None and (TOPIC_SEGMENT_FORBIDDEN & set(value) or not value.isprintable()):
            raise ValueError("must be one printable topic level without / + # $")
        return value

    @model_validator(mode="after")
    def _token_limits(self) -> ServiceConfig:
        if self.default_max_tokens > self.max_max_tokens:
            raise ValueError("default_max_tokens is above max_max_tokens")
        return self


class ModelConfig(_Strict):
    bundle: FilePath | None = None


class WarmPrompt(_Strict):
    """A system prompt read into the prefix cache at start: inline, or from a file."""

    system: str | None = Field(default=None, min_length=1, max_length=1_000_000)
    file: FilePath | None = None

    @model_validator(mode="after")
    def _one(self) -> WarmPrompt:
        if (self.system is None) == (self.file is None):
            raise ValueError("give either system or file")
        return self

    def text(self) -> str:
        """The system prompt (read from its file, UTF-8, when it has one)."""
        if self.file is not None:
            return self.file.read_text(encoding="utf-8")
        return self.system or ""


class EngineConfig(_Strict):
    provider: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"
    require: bool = False
    threads: int = Field(default=0, ge=0, le=256)
    spin: bool = True
    max_batch: int = Field(default=1, ge=1, le=64)
    prefix_cache_mb: int | None = Field(default=None, ge=0, le=1_048_576)
    warm_prompts: list[WarmPrompt] = Field(default_factory=list, max_length=64)
    save_prefix_cache: bool = False


class DeviceConfig(_Strict):
    profile: str = Field(default="auto", min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)


class Config(_Strict):
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    device: DeviceConfig = Field(default_factory=DeviceConfig)

    @property
    def client_id(self) -> str:
        """Return the MQTT client id: ``broker.client_id``, else ``edge-runtime-<device_id>``."""
        return self.broker.client_id or f"edge-runtime-{self.service.device_id}"

    def summary(self) -> str:
        """Describe the config in one line."""
        s = self.service
        return (
            f"device {s.device_id} on {self.broker.url} (MQTT {self.broker.protocol}), "
            f"topics {s.topic_prefix}/{s.device_id}/#, model {self.model.bundle}, "
            f"queue {s.queue_size}, state {s.state_dir}"
        )


def default_state_dir() -> Path:
    """Return systemd's $STATE_DIRECTORY (first entry) or /var/lib/edge-runtime."""
    first = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(first) if first else DEFAULT_STATE_DIR


def resolve_secret(path: Path) -> Path:
    """Find a secret file: a relative name is looked up in $CREDENTIALS_DIRECTORY first."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not path.is_absolute() and creds and (Path(creds) / path).is_file():
        return Path(creds) / path
    return path


def _problems(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg}")
    return lines


def _check_files(config: Config) -> list[str]:
    problems = []
    broker = config.broker
    named = {
        "broker.password_file": broker.password_file,
        "broker.tls.ca_file": broker.tls.ca_file,
        "broker.tls.cert_file": broker.tls.cert_file,
        "broker.tls.key_file": broker.tls.key_file,
    }
    for key, path in named.items():
        if path is not None and not resolve_secret(path).is_file():
            problems.append(f"{key}: no such file: {path}")
    if broker.password_file is not None and not broker.username:
        problems.append("broker.password_file: set broker.username as well")
    for i, warm in enumerate(config.engine.warm_prompts):
        if warm.file is not None and not warm.file.is_file():
            problems.append(f"engine.warm_prompts.{i}.file: no such file: {warm.file}")
    if config.model.bundle is None:
        problems.append("model.bundle: no model bundle given (config or --model)")
    elif not (config.model.bundle / "manifest.json").is_file():
        problems.append(f"model.bundle: not a bundle (no manifest.json): {config.model.bundle}")
    return problems


def build_config(data: dict[str, Any], *, check_files: bool = True) -> Config:
    """Validate a parsed config table; raise ConfigError with one line per fault."""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None
    if check_files:
        problems = _check_files(config)
        if problems:
            raise ConfigError(problems)
    return config


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or unparsable file is one ConfigError line."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return ``data`` with dotted keys (``"service.device_id"``) set from ``overrides``."""
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: must be a table")
        table[key] = value
    return merged


def load_config(
    path: Path | None, overrides: dict[str, Any] | None = None, *, check_files: bool = True
) -> Config:
    """Load the TOML at ``path`` (may be None: defaults only), apply overrides, validate."""
    data = read_toml(path) if path is not None else {}
    return build_config(apply_overrides(data, overrides or {}), check_files=check_files)
