"""Count answers across crashes, broker restarts and disk faults: none lost, none doubled.

    python benchmarks/fault_count.py [--bundle DIR] [--per-phase 12] [--steady 40]
                                     [--code TREE] [--json PATH]

A counting run in the manner of Azure IoT Edge's end-to-end test reports: a client sends
requests to a real daemon (``edge-runtime serve`` in a subprocess) through a real Mosquitto
on loopback, one batch per phase, and each phase hits the daemon with one fault while the
batch is being generated:

    steady          no fault; also measures the bytes written to the state disk per
                    request (device sectors, file system journal and the WAL's
                    checkpoint included)
    sigkill         the daemon is killed (SIGKILL) and started again
    broker-restart  the broker is stopped (SIGTERM, it saves its sessions) and started again
    disk-full       the daemon's state file system is filled, then freed
    read-only       the store's files are made immutable, the daemon killed, the files
                    repaired and the daemon started again
    double-sigkill  the daemon is killed twice while the same request generates

At the end every request is counted from the client's side: answered once (and how many
of those with an error), duplicated (more than one final message) or lost (none). The disk
phases and the byte count need root (a loop-mounted ext4 image, ``--disk-mb``, holds the
state folder); without it they are skipped. Everything runs on loopback, is bounded by
``--max-seconds``, and stops by itself. ``--code TREE`` runs the daemon from another source
tree (a git worktree of an older commit) to compare. A table is printed and the figures go
to JSON (benchmarks/results/fault_count.json by default).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import sources
from benchmarks.report import markdown_table

REPO = Path(__file__).resolve().parent.parent
DEVICE = "fc1"
MAX_TOKENS = 24
PROMPT = "Name three uses of a field sensor gateway."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """Mosquitto on a free loopback port, persistent (sessions survive a restart)."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.folder = folder
        conf = folder / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "persistence true",
                 f"persistence_location {folder}/", f"log_dest file {folder}/mosquitto.log",
                 "allow_anonymous true", "max_queued_messages 5000"]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        self.conf = conf
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([mosquitto, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise SystemExit("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Disk:
    """An ext4 image loop-mounted as the daemon's state folder (root only)."""

    def __init__(self, folder: Path, size_mb: int = 64) -> None:
        self.root = folder / "mnt"
        self.root.mkdir()
        image = folder / "state.img"
        subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(self.root)], check=True)
        source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.root)], check=True,
                                capture_output=True, text=True).stdout.strip()
        self.stat = Path("/sys/block") / Path(source).name / "stat"
        self.filler = self.root / "filler"

    def sectors_written(self) -> int:
        """Return the 512-byte sectors written to the device so far (after a sync)."""
        subprocess.run(["sync", "-f", str(self.root)], check=True)
        return int(self.stat.read_text().split()[6])

    def fill(self) -> None:
        with open(self.filler, "ab", buffering=0) as fh:
            for size in (1 << 16, 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\0" * size)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def freeze(self, *paths: Path, on: bool = True) -> None:
        subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], check=True)

    def unmount(self) -> None:
        subprocess.run(["chattr", "-R", "-i", str(self.root)], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(self.root)], check=False)


class Daemon:
    """``edge-runtime serve`` in a subprocess; ``start`` returns after READY=1."""

    def __init__(self, folder: Path, config: Path, code: Path | None) -> None:
        self.folder, self.config, self.code = folder, config, code
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "daemon.log"

    def start(self, timeout: float = 120) -> None:
        sock_path = self.folder / "notify.sock"
        sock_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(sock_path))
            sock.settimeout(0.5)
            env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), PYTHONUNBUFFERED="1")
            if self.code is not None:
                env["PYTHONPATH"] = str(self.code)
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "edge_runtime", "-v", "serve", "--config",
                     str(self.config)], cwd=self.code or REPO, env=env, stdout=log,
                    stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(TimeoutError):
                    if b"READY=1" in sock.recv(4096):
                        return
        tail = self.log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"the daemon did not become ready:\n{tail}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class Client:
    """A persistent-session MQTT v5 client that sends requests and counts final messages."""

    def __init__(self, port: int) -> None:
        self.finals: dict[str, list[dict[str, Any]]] = {}
        self.first_chunk: set[str] = set()
        self._lock = threading.Lock()
        self._seen: set[tuple[str, bytes]] = set()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fault-count",
                                   protocol=paho.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe("fc/#", qos=1)
        self._client.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self._client.connect("127.0.0.1", port, keepalive=10, clean_start=True,
                             properties=props)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        with self._lock:
            if msg.dup and (msg.topic, payload) in self._seen:
                return  # the broker's own QoS 1 retransmission to us, not the daemon's
            self._seen.add((msg.topic, payload))
            data = json.loads(payload)
            if data.get("done"):
                self.finals.setdefault(msg.topic, []).append(data)
            elif data.get("seq") == 0:
                self.first_chunk.add(msg.topic)

    def send(self, request_id: str, topic: str) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = topic
        body = {"id": request_id, "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                "temperature": 0.0}
        info = self._client.publish(f"edge/{DEVICE}/request", json.dumps(body), qos=1,
                                    properties=props)
        info.wait_for_publish(10)

    def streaming(self, topic: str) -> bool:
        with self._lock:
            return topic in self.first_chunk

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.finals.get(topic, []))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class Run:
    """Everything a phase needs."""

    broker: Broker
    daemon: Daemon
    client: Client
    disk: Disk | None
    state: Path
    deadline: float
    phases: list[dict[str, Any]] = field(default_factory=list)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        end = min(time.monotonic() + timeout, self.deadline)
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()


def _send(run: Run, phase: str, count: int) -> list[str]:
    topics = [f"fc/{phase}/{i}" for i in range(count)]
    for i, topic in enumerate(topics):
        run.client.send(f"{phase}-{i}", topic)
    return topics


def _mid_stream(run: Run, topic: str) -> None:
    run.wait(lambda: run.client.streaming(topic), 60)


def _fault_sigkill(run: Run, topics: list[str]) -> None:
    _mid_stream(run, topics[2])
    run.daemon.kill()
    run.daemon.start()


def _fault_broker(run: Run, topics: list[str]) -> None:
    _mid_stream(run, topics[2])
    run.broker.stop()
    time.sleep(2.0)
    run.broker.start()


def _fault_disk_full(run: Run, topics: list[str]) -> None:
    assert run.disk is not None
    _mid_stream(run, topics[2])
    run.disk.fill()
    time.sleep(3.0)
    run.disk.free()


def _fault_read_only(run: Run, topics: list[str]) -> None:
    assert run.disk is not None
    files = [run.state, run.state / "state.sqlite3", run.state / "state.sqlite3-wal"]
    _mid_stream(run, topics[2])
    run.disk.freeze(*files)
    time.sleep(2.0)
    run.daemon.kill()
    run.disk.freeze(*files, on=False)
    run.daemon.start()


def _fault_double_kill(run: Run, topics: list[str]) -> None:
    _mid_stream(run, topics[0])
    run.daemon.kill()
    run.client.first_chunk.discard(topics[0])
    run.daemon.start()
    _mid_stream(run, topics[0])
    run.daemon.kill()
    run.daemon.start()


FAULTS: dict[str, Callable[[Run, list[str]], None] | None] = {
    "steady": None,
    "sigkill": _fault_sigkill,
    "broker-restart": _fault_broker,
    "disk-full": _fault_disk_full,
    "read-only": _fault_read_only,
    "double-sigkill": _fault_double_kill,
}
NEEDS_DISK = {"disk-full", "read-only"}


def _phase(run: Run, name: str, count: int) -> None:
    fault = FAULTS[name]
    before = run.disk.sectors_written() if run.disk and name == "steady" else None
    started = time.monotonic()
    topics = _send(run, name, count)
    if fault is not None:
        fault(run, topics)
    run.wait(lambda: all(run.client.count(t) for t in topics), 180)
    entry: dict[str, Any] = {"phase": name, "topics": topics,
                             "seconds": round(time.monotonic() - started, 1)}
    if before is not None and run.disk is not None:
        _checkpoint(run.state / "state.sqlite3")
        written = (run.disk.sectors_written() - before) * 512
        entry["bytes_written_per_request"] = round(written / count)
    run.phases.append(entry)
    print(f"{name}: {entry['seconds']} s", file=sys.stderr)


def _checkpoint(store: Path) -> None:
    """Copy the WAL into the database now, so that its cost is counted with the phase."""
    with contextlib.closing(sqlite3.connect(store, timeout=10)) as db:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _tally(run: Run) -> list[dict[str, Any]]:
    rows = []
    for entry in run.phases:
        counts = [run.client.count(t) for t in entry["topics"]]
        errors: dict[str, int] = {}
        for topic in entry["topics"]:
            for final in run.client.finals.get(topic, [])[:1]:
                code = (final.get("error") or {}).get("code")
                if code:
                    errors[code] = errors.get(code, 0) + 1
        rows.append({
            "phase": entry["phase"], "expected": len(counts),
            "answered_once": sum(c == 1 for c in counts),
            "errors": errors, "duplicated": sum(c > 1 for c in counts),
            "lost": sum(c == 0 for c in counts), "seconds": entry["seconds"],
            "bytes_written_per_request": entry.get("bytes_written_per_request"),
        })
    return rows


def _config(path: Path, broker: Broker, bundle: Path, state: Path) -> Path:
    path.write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{broker.port}"\nreconnect_min_s = 1\n'
        f'reconnect_max_s = 2\n[service]\ndevice_id = "{DEVICE}"\nstate_dir = "{state}"\n'
        f"queue_size = 64\nstats_interval_s = 5.0\n[model]\nbundle = \"{bundle}\"\n")
    return path


def _table(rows: list[dict[str, Any]]) -> str:
    header = ["phase", "expected", "answered once", "(of which errors)", "duplicated", "lost",
              "s", "bytes written / request"]
    body = [[r["phase"], str(r["expected"]), str(r["answered_once"]),
             ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "-",
             str(r["duplicated"]), str(r["lost"]), f"{r['seconds']:.0f}",
             str(r["bytes_written_per_request"] or "-")] for r in rows]
    total = ["total", *(str(sum(r[k] for r in rows)) for k in
                        ("expected", "answered_once")), "-",
             str(sum(r["duplicated"] for r in rows)), str(sum(r["lost"] for r in rows)),
             f"{sum(r['seconds'] for r in rows):.0f}", "-"]
    return markdown_table(header, [*body, total])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path,
                        default=sources.bundle_path(sources.SMOLLM2, "int4"))
    parser.add_argument("--per-phase", type=int, default=12)
    parser.add_argument("--steady", type=int, default=40, help="requests in the steady phase")
    parser.add_argument("--code", type=Path, help="run the daemon from this source tree")
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--disk-mb", type=int, default=256,
                        help="size of the state file system (it holds the graph cache too)")
    parser.add_argument("--phases", default=",".join(FAULTS))
    parser.add_argument("--json", type=Path,
                        default=REPO / "benchmarks" / "results" / "fault_count.json")
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"no bundle at {args.bundle} (see docs/benchmarks.md)")
    root = os.geteuid() == 0 and shutil.which("mkfs.ext4") is not None
    wanted = [p for p in args.phases.split(",") if root or p not in NEEDS_DISK]
    with tempfile.TemporaryDirectory(prefix="fault-count-") as tmp:
        folder = Path(tmp)
        broker = Broker(folder)
        broker.start()
        disk = Disk(folder, args.disk_mb) if root else None
        state = (disk.root if disk else folder) / "state"
        daemon = Daemon(folder, _config(folder / "config.toml", broker, args.bundle, state),
                        args.code)
        client = None
        try:
            daemon.start()
            client = Client(broker.port)
            run = Run(broker, daemon, client, disk, state, time.monotonic() + args.max_seconds)
            for name in wanted:
                _phase(run, name, args.steady if name == "steady" else args.per_phase)
            time.sleep(3.0)  # a late duplicate would come within this
            rows = _tally(run)
        finally:
            if client is not None:
                client.close()
            daemon.terminate()
            broker.stop()
            if disk is not None:
                disk.unmount()
    print(_table(rows))
    skipped = [p for p in args.phases.split(",") if p not in wanted]
    result = {"bundle": str(args.bundle), "code": str(args.code or REPO),
              "disk_mb": args.disk_mb if root else None,
              "max_tokens": MAX_TOKENS, "phases": rows, "skipped": skipped}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 1 if any(r["duplicated"] or r["lost"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
