"""The prefix cache through the daemon, over a real broker: cached tokens in the final.

A repeated system prompt is read once; a warm prompt is read before READY; a saved cache is
read back after a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.broker import MosquittoBroker
from tests.service.conftest import DEVICE
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe
from tests.service.schemas import assert_final

REQUEST = f"edge/{DEVICE}/request"
STATS = f"edge/{DEVICE}/stats"
SYSTEM = ("You are the front desk of a small clinic. Opening hours are eight to six on "
          "weekdays. Blood tests need an appointment. Bring your insurance card.")


def ask(probe: Probe, topic: str, question: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    probe.publish(REQUEST, {"messages": messages, "max_tokens": 8, "temperature": 0},
                  response_topic=topic, qos=1)
    final = probe.wait_final(topic, 60)
    assert_final(final)
    assert final["finish_reason"] in ("stop", "length"), final.get("error")
    return final


def cached(final: dict[str, Any]) -> int:
    return int(final["usage"]["prompt_tokens_details"]["cached_tokens"])


def test_a_repeated_system_prompt_is_read_once(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    probe = client_factory(broker.port)
    probe.subscribe("prefix/#")
    probe.subscribe(STATS)
    daemon_factory(broker, engine={"threads": 1, "prefix_cache_mb": 8})
    first = ask(probe, "prefix/1", "When do you open?")
    second = ask(probe, "prefix/2", "Do I need an appointment?")
    assert cached(first) < 20
    assert cached(second) > 64
    assert cached(second) < second["usage"]["prompt_tokens"]

    def hits(_r: object) -> bool:
        return any((m.json()["scheduler"].get("prefix_cache") or {}).get("hit_rate", 0) > 0.3
                   for m in probe.on(STATS))

    assert probe.wait_for(hits, 10), "stats should carry the prefix cache's hit rate"


def _with_warm_prompt(daemon: DaemonProcess, prompt_file: Path) -> None:
    """Add a warm prompt read from ``prompt_file`` to the daemon's [engine] table."""
    text = daemon.config_path.read_text()
    line = f'warm_prompts = [{{ file = "{prompt_file}" }}]\n'
    daemon.config_path.write_text(text.replace("[engine]\n", "[engine]\n" + line))


def test_a_warm_prompt_is_read_before_ready_and_kept_across_a_restart(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
    tmp_path: Path,
) -> None:
    probe = client_factory(broker.port)
    probe.subscribe("warm/#")
    prompt_file = tmp_path / "clinic.txt"
    prompt_file.write_text(SYSTEM, encoding="utf-8")
    engine = {"threads": 1, "prefix_cache_mb": 8, "save_prefix_cache": True}

    warmed = daemon_factory(broker, start=False, engine=engine)
    _with_warm_prompt(warmed, prompt_file)
    warmed.start()
    assert cached(ask(probe, "warm/1", "When do you open?")) > 64
    assert warmed.terminate() == 0
    assert (tmp_path / "state" / "prefix-cache.bin").is_file()

    restarted = daemon_factory(broker, engine=engine)  # no warm prompt this time
    assert cached(ask(probe, "warm/2", "Where do I park?")) > 64
    assert "read back" in restarted.log()
