"""One end-to-end answer from the real SmolLM2-135M-Instruct int4 bundle over MQTT."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.broker import MosquittoBroker
from tests.service.conftest import DEVICE
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe
from tests.service.schemas import assert_chunk, assert_final


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_answers_a_question_over_mqtt(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
    smollm2_bundle: Callable[..., Path],
) -> None:
    bundle = smollm2_bundle("int4")
    daemon_factory(broker, model={"bundle": str(bundle)}, engine={"threads": 2})
    probe = client_factory(broker.port)
    probe.subscribe("real/answer")
    probe.subscribe(f"edge/{DEVICE}/info")
    probe.publish(f"edge/{DEVICE}/request",
                  {"id": "capital", "prompt": "What is the capital of France? Answer in one word.",
                   "max_tokens": 24, "temperature": 0.0},
                  response_topic="real/answer", correlation=b"fr")
    final = probe.wait_final("real/answer", timeout=120)
    assert_final(final)
    assert final["finish_reason"] in ("stop", "length")
    assert re.search(r"\bParis\b", final["text"]), final["text"]
    chunks = probe.chunks("real/answer")
    for chunk in chunks:
        assert_chunk(chunk)
    assert "".join(c["delta"] for c in chunks) == final["text"]
    info = probe.on(f"edge/{DEVICE}/info")[-1].json()
    assert info["model"]["context_length"] >= 2048
