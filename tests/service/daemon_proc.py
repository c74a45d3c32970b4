"""Run ``python -m edge_runtime serve`` as a real subprocess, with a systemd notify socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """Write a TOML config from ``{"section": {"key": value}}`` (one level of sub-tables)."""
    lines: list[str] = []
    for section, values in tables.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, dict):
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        for key, value in values.items():
            if isinstance(value, dict):
                lines.append(f"[{section}.{key}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in value.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class DaemonProcess:
    """One daemon subprocess; ``start`` returns once systemd would have seen READY=1."""

    def __init__(self, folder: Path, config: dict[str, dict[str, Any]]) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = write_config(folder / "config.toml", config)
        self.log_path = folder / "daemon.log"
        self.notify_path = folder / "notify.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.notifications: list[str] = []
        self._sock: socket.socket | None = None
        self.env_extra: dict[str, str] = {}

    def start(self, timeout: float = 60.0, wait_ready: bool = True) -> DaemonProcess:
        """Start the process; unless ``wait_ready`` is False, wait for READY=1."""
        self.notify_path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.notify_path))
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), PYTHONUNBUFFERED="1",
                   **self.env_extra)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_runtime", "-vv", "serve",
                 "--config", str(self.config_path)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait for READY=1; kill the daemon and raise if it does not come."""
        if not self.wait_notification("READY=1", timeout):
            self.kill()
            raise RuntimeError(f"daemon never became ready:\n{self.log()[-3000:]}")

    def wait_notification(self, text: str, timeout: float) -> bool:
        """Read notify messages until one contains ``text``."""
        assert self._sock is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in n for n in self.notifications):
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return False
            self._sock.settimeout(0.2)
            try:
                self.notifications.append(self._sock.recv(4096).decode())
            except TimeoutError:
                continue
        return any(text in n for n in self.notifications)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 30.0) -> int:
        """Send SIGTERM and wait; return the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close()
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.setblocking(False)
            while True:
                try:
                    self.notifications.append(self._sock.recv(4096).decode())
                except BlockingIOError:
                    break
            self._sock.close()
            self._sock = None
