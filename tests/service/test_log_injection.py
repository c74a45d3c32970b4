"""Nothing a client sends writes a line of its own into the daemon's log, or a huge one."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from tests.fixtures.broker import MosquittoBroker
from tests.service.conftest import DEVICE
from tests.service.daemon_proc import DaemonProcess
from tests.service.mqtt_client import Probe

REQUEST = f"edge/{DEVICE}/request"
CANCEL = f"edge/{DEVICE}/cancel"
FORGED = "\n2026-01-01 00:00:00,000 ERROR edge_runtime.service.daemon: FORGED"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


def test_no_client_text_makes_a_log_line_of_its_own_or_a_huge_one(
    broker: MosquittoBroker,
    daemon_factory: Callable[..., DaemonProcess],
    client_factory: Callable[..., Probe],
) -> None:
    daemon = daemon_factory(broker)
    probe = client_factory(broker.port)
    probe.subscribe(f"edge/{DEVICE}/response/#")
    probe.subscribe("inj/#")
    for cancel in ({"id": "job" + FORGED}, {"id": FORGED}, {"id": "x" * 5_000_000},
                   {"id": "line\u2028FORGED"}, {"id": "ok\n"}, {"id": ["a\nFORGED"]}):
        probe.publish(CANCEL, cancel)
    probe.publish(CANCEL, b'{"id": "tail", "pad": "' + b"p" * 2000 + b'"}')
    probe.publish(CANCEL, b"\xff\nFORGED not utf-8")
    # Requests naming no usable reply place are logged, not answered.
    probe.publish(REQUEST, {"prompt": 5, "id": "bad" + FORGED})
    probe.publish(REQUEST, {"prompt": "x", "field" + FORGED: 1})
    probe.publish(REQUEST, {"prompt": "x", "reply_to": "inj" + FORGED})
    # An id ending in a newline is refused, not used in a topic or a log line.
    probe.publish(REQUEST, {"id": "trail\n", "prompt": "x"}, response_topic="inj/trail")
    assert probe.wait_final("inj/trail")["error"]["code"] == "bad_request"
    probe.publish(REQUEST, {"id": "after", "prompt": "Hi", "max_tokens": 4},
                  response_topic="inj/after")
    assert probe.wait_final("inj/after")["finish_reason"] in ("stop", "length")
    assert daemon.alive
    lines = daemon.log().splitlines()
    strays = [line for line in lines if line and not LOG_LINE.match(line)
              and not line.startswith((" ", "Traceback", "\t"))]
    assert strays == [], strays[:5]
    assert not [line for line in lines if line.endswith(": FORGED")]
    assert max(len(line) for line in lines) < 2000
    replies = [m.topic for m in probe.received if m.topic.startswith(f"edge/{DEVICE}/response/")]
    assert all(topic.isprintable() for topic in replies), replies
    assert all(json.loads(m.payload).get("id") != "trail\n" for m in probe.received)
