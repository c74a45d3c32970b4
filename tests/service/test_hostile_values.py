"""Values at the edges, one request at a time: a clear code for bad input, an answer for the rest,
and a check before any cost."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.fixtures.broker import MosquittoBroker
from tests.service.conftest import DEVICE
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe
from tests.service.schemas import assert_final

REQUEST = f"edge/{DEVICE}/request"


def _peak_rss_mb(daemon: DaemonProcess) -> float:
    assert daemon.proc is not None
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_values_at_the_edges_get_a_clear_code_or_an_answer(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    daemon = daemon_factory(broker)
    probe = client_factory(broker.port)
    probe.subscribe("edge-values/#")
    probe.publish(REQUEST, b'{"prompt": "a\\ud800b"}', response_topic="edge-values/surrogate")
    surrogate = probe.wait_final("edge-values/surrogate")
    assert_final(surrogate)
    assert surrogate["error"]["code"] == "bad_request", surrogate
    tiny = {"temperature": 1e-300, "repetition_penalty": 1e-300, "top_p": 1e-300,
            "min_p": 1.0}
    for name, value in tiny.items():
        probe.publish(REQUEST, {"prompt": "Hello", "max_tokens": 8, name: value},
                      response_topic=f"edge-values/{name}")
    for name in tiny:
        final = probe.wait_final(f"edge-values/{name}")
        assert_final(final)
        assert final["finish_reason"] in ("stop", "length"), (name, final)
    assert daemon.alive


def test_an_oversized_payload_is_refused_before_it_is_parsed(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    """15 MB of JSON over the 256 KiB limit: refused on its v5 Response Topic at the cost
    of the bytes themselves, not of parsing them (which took hundreds of MB)."""
    daemon = daemon_factory(broker)
    probe = client_factory(broker.port)
    probe.subscribe("big/#")
    probe.publish(REQUEST, {"prompt": "warm", "max_tokens": 2}, response_topic="big/warm")
    probe.wait_final("big/warm")
    before = _peak_rss_mb(daemon)
    objects = b", ".join([b'{"a": 1}'] * 1_500_000)  # 15 MB; parsed, ~350 MB of dicts
    probe.publish(REQUEST, b'{"prompt": "x", "stop": [' + objects + b"]}",
                  response_topic="big/huge")
    final = probe.wait_final("big/huge", 30)
    assert final["error"]["code"] == "bad_request" and "exceeds" in final["error"]["message"]
    grown = _peak_rss_mb(daemon) - before
    assert grown < 120, f"peak memory grew {grown:.0f} MB for one refused payload"
    assert daemon.alive
