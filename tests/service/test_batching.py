"""Several clients at once: with engine.max_batch the daemon decodes their requests together."""

from __future__ import annotations

from collections.abc import Callable

from tests.fixtures.broker import MosquittoBroker
from tests.service.conftest import DEVICE
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe
from tests.service.schemas import assert_final

REQUEST = f"edge/{DEVICE}/request"
INFO = f"edge/{DEVICE}/info"
STATS = f"edge/{DEVICE}/stats"
PROMPTS = ["Hello", "Sensors report", "The quick brown fox", "def add(a, b):", "café", "0123"]


def _answers(probe: Probe, tag: str) -> dict[str, str]:
    topics = {p: f"batch/{tag}/{i}" for i, p in enumerate(PROMPTS)}
    for prompt, topic in topics.items():
        probe.publish(REQUEST, {"prompt": prompt, "max_tokens": 24, "temperature": 0},
                      response_topic=topic, qos=1)
    texts = {}
    for prompt, topic in topics.items():
        final = probe.wait_final(topic, 60)
        assert_final(final)
        assert final["finish_reason"] in ("stop", "length"), final
        chunks = probe.chunks(topic)
        assert "".join(c["delta"] for c in chunks) == final["text"]
        texts[prompt] = final["text"]
    return texts


def test_batched_daemon_answers_like_the_sequential_one(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    probe = client_factory(broker.port)
    probe.subscribe("batch/#")
    probe.subscribe(INFO)
    probe.subscribe(STATS)

    sequential = daemon_factory(broker, engine={"max_batch": 1})
    expected = _answers(probe, "one")
    assert sequential.terminate() == 0

    batched = daemon_factory(broker, engine={"max_batch": 4})
    assert probe.wait_for(lambda _r: any(m.json()["model"].get("max_batch") == 4
                                              for m in probe.on(INFO)),
                          20), "the info topic should say the daemon batches 4 at once"
    assert _answers(probe, "four") == expected

    def shared_forwards(_r: object) -> bool:
        return any((m.json().get("scheduler") or {}).get("peak_batch", 0) >= 2
                   for m in probe.on(STATS))

    assert probe.wait_for(shared_forwards, 10), "stats should show requests decoded together"
    assert batched.alive


def test_an_odd_request_never_harms_the_others_in_its_batch(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    """Values the schema accepts at their extremes answer; the batch around them goes on."""
    probe = client_factory(broker.port)
    probe.subscribe("odd/#")
    daemon = daemon_factory(broker, engine={"max_batch": 4})
    odd = [{"temperature": 1e-300}, {"repetition_penalty": 1e-300},
           {"temperature": 5, "top_p": 1e-9, "min_p": 1.0, "top_k": 1_000_000}]
    for i, fields in enumerate(odd):
        probe.publish(REQUEST, {"prompt": "Hello", "max_tokens": 40, **fields},
                      response_topic=f"odd/{i}")
    probe.publish(REQUEST, {"prompt": "The quick brown fox", "max_tokens": 40, "temperature": 0},
                  response_topic="odd/plain")
    for topic in [*(f"odd/{i}" for i in range(len(odd))), "odd/plain"]:
        final = probe.wait_final(topic, 60)
        assert_final(final)
        assert final["finish_reason"] in ("stop", "length"), final
    assert daemon.alive


def test_waiting_for_a_batch_slot_shows_in_queued_s(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    probe = client_factory(broker.port)
    probe.subscribe("slot/#")
    first = daemon_factory(broker, engine={"max_batch": 2})
    assert first.terminate() == 0  # its broker session keeps what arrives meanwhile
    for i in range(3):
        probe.publish(REQUEST, {"prompt": "Tell me a long story", "max_tokens": 200,
                                "temperature": 0, "stream": False}, response_topic=f"slot/{i}")
    daemon_factory(broker, like=first)  # all three arrive at once: two get a slot, one waits
    finals = sorted((probe.wait_final(f"slot/{i}", 60) for i in range(3)),
                    key=lambda f: f["timings"]["queued_s"])
    first_done = min(f["timings"]["first_token_s"] + f["timings"]["decode_s"]
                     for f in finals[:2])
    # it waited for one of the others to end; they arrived over MQTT a few ms apart, which is
    # a large share of a tiny model's answer, hence the margin
    assert finals[2]["timings"]["queued_s"] >= 0.5 * first_done, finals
