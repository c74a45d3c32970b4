"""Topic names of one device, and the rule for which topics may receive replies."""

from __future__ import annotations

from dataclasses import dataclass

MAX_TOPIC_BYTES = 256


@dataclass(frozen=True)
class Topics:
    """The topic names of one device."""

    prefix: str
    device: str
    shared_group: str | None = None

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    @property
    def request(self) -> str:
        return f"{self.base}/request"

    @property
    def cancel(self) -> str:
        return f"{self.base}/cancel"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def info(self) -> str:
        return f"{self.base}/info"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def pool_request(self) -> str | None:
        """The shared-subscription filter several devices split, if a group is configured."""
        if self.shared_group is None:
            return None
        return f"$share/{self.shared_group}/{self.prefix}/pool/request"

    def response(self, request_id: str) -> str:
        return f"{self.base}/response/{request_id}"

    def is_request_topic(self, topic: str) -> bool:
        return topic == self.request or topic == f"{self.prefix}/pool/request"


def topic_refusal(topic: str, topics: Topics) -> str | None:
    """Say why ``topic`` may not receive replies, or return None when it may.

    A reply topic must be non-empty, at most 256 bytes, free of wildcards and NUL, must not
    start with ``$``, and inside the ``<prefix>/`` namespace it must be under this device's
    ``<prefix>/<device>/response/``; outside that namespace any topic is allowed.
    """
    if not topic:
        return "reply topic is empty"
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return f"reply topic is longer than {MAX_TOPIC_BYTES} bytes"
    if "+" in topic or "#" in topic:
        return "reply topic has a wildcard"
    if "\0" in topic or not topic.isprintable():
        return "reply topic has control characters"
    if topic.startswith("$"):
        return "reply topic starts with $"
    if topic.startswith(topics.prefix + "/") and not topic.startswith(topics.base + "/response/"):
        return f"reply topic is inside {topics.prefix}/ but not under {topics.base}/response/"
    return None
