"""A Mosquitto broker on loopback and ``edge-runtime serve`` behind it, timed from a client.

Used by benchmarks/prefix_cache.py: ``ask`` publishes a streamed request and returns the
time from the publish to the first chunk, as a client on the same machine sees it, and the
final's usage.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parent.parent
DEVICE = "bench"
READY_TIMEOUT_S = 300.0
ANSWER_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Loopback:
    """Start the broker and the daemon in ``work``; stop both on exit."""

    def __init__(self, work: Path, bundle: Path, threads: int, cache_mb: int) -> None:
        self.work = work
        self.port = free_port()
        self.bundle, self.threads, self.cache_mb = bundle, threads, cache_mb
        self.procs: list[subprocess.Popen[bytes]] = []
        self.messages: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.cond = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"bench-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message

    def __enter__(self) -> Loopback:
        self.work.mkdir(parents=True, exist_ok=True)
        conf = self.work / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self._spawn([mosquitto, "-c", str(conf)], "mosquitto.log")
        time.sleep(0.5)
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self.client.subscribe("bench/#", qos=1)
        self.client.subscribe(f"edge/{DEVICE}/status", qos=1)
        self._spawn([sys.executable, "-m", "edge_runtime", "serve", "--config",
                     str(self._config())], "daemon.log")
        self._wait(f"edge/{DEVICE}/status",
                   lambda m: m.get("state") == "online", READY_TIMEOUT_S)
        return self

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType]) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def _spawn(self, command: list[str], log: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.work / log, "ab") as out:
            self.procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                               stderr=subprocess.STDOUT))

    def _config(self) -> Path:
        state = self.work / f"state-{uuid.uuid4().hex[:6]}"
        path = self.work / "config.toml"
        path.write_text(
            f'[broker]\nurl = "mqtt://127.0.0.1:{self.port}"\n'
            f'[service]\ndevice_id = "{DEVICE}"\nstate_dir = "{state}"\n'
            f'max_prompt_bytes = 262144\n'
            f'[model]\nbundle = "{self.bundle}"\n'
            f"[engine]\nthreads = {self.threads}\nprefix_cache_mb = {self.cache_mb}\n"
        )
        return path

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self.cond:
            self.messages.setdefault(msg.topic, []).append(
                (time.perf_counter(), json.loads(msg.payload)))
            self.cond.notify_all()

    def _wait(self, topic: str, done: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(done(m) for _, m in self.messages.get(topic, [])):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"nothing on {topic}; see {self.work}/daemon.log")
                self.cond.wait(left)

    def ask(self, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        """Send a streamed greedy request; return its time to first chunk and its final."""
        topic = f"bench/{uuid.uuid4().hex[:8]}"
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = topic
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0,
                "stream": True}
        sent = time.perf_counter()
        self.client.publish(f"edge/{DEVICE}/request", json.dumps(body), qos=1,
                            properties=props)
        self._wait(topic, lambda m: m.get("done"), ANSWER_TIMEOUT_S)
        received = self.messages[topic]
        first = next((t for t, m in received if not m.get("done")), received[-1][0])
        final = next(m for _, m in received if m.get("done"))
        usage = final["usage"]
        return {"ttft_s": first - sent, "prompt_tokens": usage["prompt_tokens"],
                "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
                "final": final}
