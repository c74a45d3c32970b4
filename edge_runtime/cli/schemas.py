"""``edge-runtime schemas``: print, write or check the protocol's JSON Schemas."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("schemas", help="print, write or check the MQTT payload JSON Schemas",
                       description=__doc__)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="DIR", help="write the schema files here")
    group.add_argument("--check", type=Path, metavar="DIR",
                       help="exit 1 if the files here differ from the models")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge_runtime.service import schemas

    if args.write is not None:
        for path in schemas.write(args.write):
            print(f"wrote {path}")
        return 0
    if args.check is not None:
        stale = schemas.stale(args.check)
        for name in stale:
            print(f"{args.check}/{name}.schema.json is stale; run: edge-runtime schemas "
                  f"--write {args.check}", file=sys.stderr)
        return 1 if stale else 0
    for name in schemas.MODELS:
        sys.stdout.write(schemas.render(name))
    return 0
