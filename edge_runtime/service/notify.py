"""Tell systemd how the service is doing (sd_notify over the NOTIFY_SOCKET datagram socket)."""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Send READY/STOPPING/WATCHDOG/STATUS messages; a no-op outside systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_on = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s = int(usec) / 1e6 / 2 if watchdog_on else None
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, message: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning("cannot notify systemd: %s", exc)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def progress(self) -> None:
        """Feed the watchdog; call only after the main loop made real progress."""
        interval = self.watchdog_interval_s
        now = time.monotonic()
        if interval is not None and now - self._last_ping >= interval:
            self._last_ping = now
            self.send("WATCHDOG=1")
