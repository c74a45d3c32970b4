"""``edge-runtime doctor``: tell a technician what this board has and what blocks serving."""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

from edge_runtime import __version__
from edge_runtime.cli.doctor_checks import (
    check_board,
    check_broker,
    check_bundle,
    check_device_id,
    check_huge_pages,
    check_memory,
    check_profile,
    check_runtime,
    default_bundle,
)
from edge_runtime.cli.doctor_report import FAIL, OK, Finding, blocking, render_json, render_text
from edge_runtime.config import DEFAULT_CONFIG_PATH, Config, load_config
from edge_runtime.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor", help="check the board, model, runtime and broker", description=__doc__
    )
    p.add_argument("--config", type=Path, help=f"TOML config (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--model", type=Path, help="bundle directory to check")
    p.add_argument("--broker", help="broker URL to try, mqtt://host:port or mqtts://host:port")
    p.add_argument("--root", type=Path, default=Path("/"),
                   help="read board files under this folder (simulate a board from a fixture)")
    p.add_argument("--timeout", type=float, default=3.0, help="broker connect timeout (s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--systemd-dropin", action="store_true",
                   help="print the systemd drop-in (MemoryHigh/Max, devices) for this board")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> tuple[Config, Finding]:
    path = args.config
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    overrides: dict[str, Any] = {
        "model.bundle": str(args.model) if args.model else None,
        "broker.url": args.broker,
    }
    where = str(path) if path else "defaults (no config file)"
    try:
        config = load_config(path, overrides, check_files=False)
    except ConfigError as exc:
        fallback = Config()
        return fallback, Finding("config", FAIL, f"{where}: " + "; ".join(exc.problems),
                                 "fix the lines named; `edge-runtime serve --check-config`")
    return config, Finding("config", OK, where)


def _bundle_path(config: Config) -> Path | None:
    if config.model.bundle is not None:
        return config.model.bundle
    fallback = default_bundle()
    return fallback if fallback.is_dir() else None


def collect(args: argparse.Namespace) -> list[Finding]:
    """Run every check in order and return the findings."""
    config, config_finding = _config(args)
    findings = [config_finding]
    board_finding, board = check_board(args.root)
    profile_finding, profile = check_profile(config, board)
    findings += [board_finding, profile_finding, check_runtime(profile, board)]
    findings.append(check_huge_pages(args.root, profile))
    bundle_finding, manifest = check_bundle(_bundle_path(config))
    findings.append(bundle_finding)
    if manifest is not None:
        findings.append(check_memory(manifest, profile, board))
    broker = check_broker(config.broker, args.timeout)
    findings.append(broker)
    if broker.status == OK:
        device = check_device_id(config, args.timeout)
        if device is not None:
            findings.append(device)
    return findings


def _dropin(args: argparse.Namespace) -> int:
    config, config_finding = _config(args)
    _, board = check_board(args.root)
    finding, profile = check_profile(config, board)
    for problem in (config_finding, finding):
        if problem.status == FAIL:
            print(f"edge-runtime doctor: {problem.check}: {problem.summary}", file=sys.stderr)
            return 1
    assert profile is not None
    print(profile.systemd_dropin(), end="")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.systemd_dropin:
        return _dropin(args)
    findings = collect(args)
    header = (
        f"edge-runtime {__version__} doctor: Python {platform.python_version()} "
        f"on {platform.machine()}"
    )
    if args.json:
        print(render_json(findings, {"version": __version__}))
    else:
        print(render_text(findings, header))
    return 1 if blocking(findings) else 0


__all__ = ["OK", "collect", "register", "run"]
