"""``edge-runtime serve``: answer prompts over MQTT (the systemd service's command)."""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from edge_runtime.config import DEFAULT_CONFIG_PATH, Config, load_config
from edge_runtime.errors import ConfigError

log = logging.getLogger("edge_runtime.serve")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="answer prompts over MQTT", description=__doc__)
    p.add_argument("--config", type=Path, default=None,
                   help=f"TOML config file (default {DEFAULT_CONFIG_PATH} if it exists)")
    p.add_argument("--model", type=Path, help="bundle directory (model.bundle)")
    p.add_argument("--broker", help="broker URL, mqtt://host:port or mqtts://host:port")
    p.add_argument("--device-id", help="device id used in topics (service.device_id)")
    p.add_argument("--state-dir", type=Path, help="durable state folder (service.state_dir)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration, print a summary, exit 0 or 1")
    p.set_defaults(func=run)


def _config_path(args: argparse.Namespace) -> Path | None:
    if args.config is not None:
        return Path(args.config)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config file and apply the command-line overrides."""
    overrides: dict[str, Any] = {
        "model.bundle": str(args.model) if args.model else None,
        "broker.url": args.broker,
        "service.device_id": args.device_id,
        "service.state_dir": str(args.state_dir) if args.state_dir else None,
    }
    return load_config(_config_path(args), overrides)


def run(args: argparse.Namespace) -> int:
    from edge_runtime.memory import MemoryPolicy, install
    from edge_runtime.service.model import resolve_profile

    try:
        config = config_from_args(args)
        profile = resolve_profile(config)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"edge-runtime: config: {line}", file=sys.stderr)
        return 1
    if args.check_config:
        print(f"config ok: {config.summary()}, device profile {profile.name}")
        return 0
    if not args.verbose:
        # A service should say when it is ready and why it stops, not only warnings.
        logging.getLogger("edge_runtime").setLevel(logging.INFO)
    install(MemoryPolicy.from_names(profile.memory))  # before any thread: it may re-execute
    return serve(config)


def serve(config: Config) -> int:
    """Load the model, then serve until SIGTERM/SIGINT."""
    from edge_runtime.service.daemon import Daemon, StopRequested
    from edge_runtime.service.model import load_model, save_prefix_cache
    from edge_runtime.service.mqtt import PahoTransport
    from edge_runtime.service.notify import Notifier
    from edge_runtime.service.store import Store

    events: queue.SimpleQueue[object] = queue.SimpleQueue()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        events.put(StopRequested(signum))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    notifier = Notifier()
    notifier.status("loading the model")
    store = Store(config.service.state_dir)
    engine = load_model(config)
    client_id = config.broker.client_id or f"edge-runtime-{config.service.device_id}"
    transport = PahoTransport(config.broker, client_id, events)
    daemon = Daemon(config, engine, transport, events, store, notifier)
    code = daemon.run()
    engine.close()
    save_prefix_cache(engine, config)
    log.info("stopped")
    return code
