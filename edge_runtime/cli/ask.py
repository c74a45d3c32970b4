"""``edge-runtime ask "prompt"``: send one request over MQTT and stream the answer to stdout.

Exit codes: 0 answered, 1 the daemon answered with an error, 2 no answer before the timeout
(or the broker was unreachable).
"""

from __future__ import annotations

import argparse
import json
import queue
import socket
import sys
import time
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from edge_runtime.cli.shaping import add_shape_arguments, shape_fields
from edge_runtime.config import BrokerConfig, resolve_secret


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ask", help="ask a serving device one question over MQTT",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help="the question")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL")
    p.add_argument("--device-id", default=socket.gethostname(), help="device to ask")
    p.add_argument("--prefix", default="edge", help="topic prefix")
    p.add_argument("--reply-topic",
                   help="where the answer should go (default: <prefix>-ask/<random id>)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer")
    p.add_argument("--max-tokens", type=int, help="most tokens to generate")
    p.add_argument("--temperature", type=float, help="0 for greedy")
    p.add_argument("--username", help="broker user")
    p.add_argument("--password-file", help="file holding the broker password")
    p.add_argument("--ca-file", help="CA certificate for mqtts://")
    p.add_argument("--json", action="store_true", help="print the final reply as JSON")
    add_shape_arguments(p)
    p.set_defaults(func=run)


def _request(args: argparse.Namespace, request_id: str) -> bytes:
    body: dict[str, Any] = {"id": request_id, "prompt": args.prompt, "stream": not args.json}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        body["temperature"] = args.temperature
    body.update(shape_fields(args))
    return json.dumps(body).encode()


def _client(args: argparse.Namespace, inbox: queue.SimpleQueue[Any]) -> paho.Client:
    broker = BrokerConfig.model_validate({
        "url": args.broker, "username": args.username, "password_file": args.password_file,
        "tls": {"ca_file": args.ca_file} if args.ca_file else {},
    })
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ask-{uuid.uuid4().hex[:12]}",
                         protocol=paho.MQTTv5)
    if broker.username:
        client.username_pw_set(broker.username, broker.password())
    if broker.uses_tls:
        ca = resolve_secret(broker.tls.ca_file) if broker.tls.ca_file else None
        client.tls_set(ca_certs=str(ca) if ca else None)
    client.on_connect = lambda _c, _u, _f, reason, _p: inbox.put(("connect", reason))
    client.on_subscribe = lambda _c, _u, _m, reasons, _p: inbox.put(("suback", reasons))
    client.on_message = lambda _c, _u, msg: inbox.put(("message", msg.payload))
    client.connect(broker.host, broker.port, keepalive=30)
    return client


def _wait(inbox: queue.SimpleQueue[Any], kind: str, deadline: float) -> Any:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(kind)
        got_kind, value = inbox.get(timeout=left)
        if got_kind == kind:
            return value


def run(args: argparse.Namespace) -> int:
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    request_id = uuid.uuid4().hex
    reply_topic = args.reply_topic or f"{args.prefix}-ask/{request_id}"
    deadline = time.monotonic() + args.timeout
    try:
        client = _client(args, inbox)
    except ValidationError as exc:
        print(f"edge-runtime ask: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edge-runtime ask: cannot reach {args.broker}: {exc}", file=sys.stderr)
        return 2
    client.loop_start()
    try:
        return _exchange(args, client, inbox, request_id, reply_topic, deadline)
    except (TimeoutError, queue.Empty):
        print(f"\nedge-runtime ask: no answer within {args.timeout:g} s", file=sys.stderr)
        return 2
    finally:
        client.disconnect()
        client.loop_stop()


def _exchange(
    args: argparse.Namespace, client: paho.Client, inbox: queue.SimpleQueue[Any],
    request_id: str, reply_topic: str, deadline: float,
) -> int:
    reason = _wait(inbox, "connect", deadline)
    if reason.is_failure:
        print(f"edge-runtime ask: broker refused the connection: {reason}", file=sys.stderr)
        return 2
    client.subscribe(reply_topic, qos=1)
    _wait(inbox, "suback", deadline)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = reply_topic
    props.CorrelationData = request_id.encode()
    topic = f"{args.prefix}/{args.device_id}/request"
    client.publish(topic, _request(args, request_id), qos=1, properties=props)
    while True:
        message = json.loads(_wait(inbox, "message", deadline))
        if not message.get("done"):
            sys.stdout.write(message.get("delta", ""))
            sys.stdout.flush()
            continue
        return _finish(args, message)


def _finish(args: argparse.Namespace, final: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(final, indent=2))
    else:
        sys.stdout.write("\n")
        for call in final.get("tool_calls") or []:
            print(json.dumps(call, ensure_ascii=False))
    if final.get("finish_reason") == "error":
        err = final.get("error", {})
        print(f"edge-runtime ask: {err.get('code')}: {err.get('message')}", file=sys.stderr)
        return 1
    return 0
