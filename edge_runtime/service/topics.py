"""Topic names of one device, and the rule for which topics may receive replies.

A request may come on ``<prefix>/<device>/request`` or on ``<prefix>/<device>/request/<name>``.
MQTT does not tell a subscriber who published a message; what the daemon can rely on is
the topic the broker accepted it on. Under an ACL such as ``pattern write
edge/gw-7/request/%u`` that last level is the publisher's user name (``%c``: its client id),
so the daemon calls it the *requester* and confines the request's replies to it:
default replies go to ``<prefix>/<device>/response/<requester>/<id>``, and other reply
topics must match ``service.reply_topic_pattern`` with ``%u`` and ``%c`` standing for it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

MAX_TOPIC_BYTES = 256


@dataclass(frozen=True)
class Topics:
    """The topic names of one device (and, per message, who sent it)."""

    prefix: str
    device: str
    shared_group: str | None = None
    reply_pattern: str | None = None
    """``service.reply_topic_pattern``: where replies outside the prefix may go."""
    requester: str | None = None
    """The last level of the request topic, when the request came on ``request/<name>``."""

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
    def pool(self) -> str:
        return f"{self.prefix}/pool/request"

    @property
    def pool_request(self) -> str | None:
        """The shared-subscription filter several devices split, if a group is configured."""
        if self.shared_group is None:
            return None
        return f"$share/{self.shared_group}/{self.pool}"

    def filters(self) -> list[str]:
        """Return every filter the daemon subscribes to."""
        found = [self.request, f"{self.request}/+", self.cancel]
        if self.pool_request:
            found += [self.pool_request, f"{self.pool_request}/+"]
        return found

    @property
    def responses(self) -> str:
        """The default reply namespace of this request: ``<base>/response[/<requester>]``."""
        base = f"{self.base}/response"
        return base if self.requester is None else f"{base}/{self.requester}"

    def response(self, request_id: str) -> str:
        return f"{self.responses}/{request_id}"

    def requester_of(self, topic: str) -> str | None:
        """Return ``<name>`` of ``.../request/<name>`` (None for the plain request topics)."""
        for base in (self.request, self.pool):
            if topic.startswith(base + "/"):
                level = topic[len(base) + 1:]
                return level if level and "/" not in level else None
        return None

    def for_topic(self, topic: str) -> Topics:
        """Return these topics as seen by a request that arrived on ``topic``."""
        return replace(self, requester=self.requester_of(topic))

    def is_request_topic(self, topic: str) -> bool:
        return topic in (self.request, self.pool) or self.requester_of(topic) is not None


def pattern_matches(pattern: str, topic: str, requester: str | None) -> bool:
    """Match ``topic`` against an ACL-style pattern (``+``, a final ``#``, ``%u``, ``%c``).

    ``%u`` and ``%c`` stand for ``requester``; a pattern that uses them matches nothing
    for a request that came without one.
    """
    if "%u" in pattern or "%c" in pattern:
        if requester is None:
            return False
        pattern = pattern.replace("%u", requester).replace("%c", requester)
    wanted, levels = pattern.split("/"), topic.split("/")
    for i, part in enumerate(wanted):
        if part == "#":
            return True
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(wanted) == len(levels)


def topic_refusal(topic: str, topics: Topics) -> str | None:
    """Say why ``topic`` may not receive replies, or return None when it may.

    A reply topic must be non-empty, at most 256 bytes, free of wildcards and control
    characters, must not start with ``$``; inside the ``<prefix>/`` namespace it must be
    under the request's own response namespace (:attr:`Topics.responses`), and outside it
    it must match ``service.reply_topic_pattern`` when one is set.
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
    if topic.startswith(topics.prefix + "/"):
        if not topic.startswith(topics.responses + "/"):
            return f"reply topic is inside {topics.prefix}/ but not under {topics.responses}/"
        return None
    pattern = topics.reply_pattern
    if pattern is not None and not pattern_matches(pattern, topic, topics.requester):
        return "reply topic does not match service.reply_topic_pattern for this requester"
    return None
