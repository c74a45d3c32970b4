"""The device half imports and generates with torch, transformers, optimum and onnx refused."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

SCRIPT = r"""
import importlib, importlib.abc, json, pkgutil, sys

BLOCKED = {"torch", "transformers", "optimum", "onnx"}
refused = []

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            refused.append(name)
            raise ImportError(f"{name} is not available on a device")
        return None

sys.meta_path.insert(0, Refuse())

import edge_runtime
for info in pkgutil.walk_packages(edge_runtime.__path__, "edge_runtime."):
    if info.name != "edge_runtime.__main__":
        importlib.import_module(info.name)

from edge_runtime.cli import main
from edge_runtime.engine import GenerationRequest, load_engine

engine = load_engine(sys.argv[1])
result = engine.generate(GenerationRequest(prompt="Hello", max_tokens=8, temperature=0.0))
code = main(["run", sys.argv[1], "Hello", "--max-tokens", "4"])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("\n" + json.dumps({
    "tokens": result.usage.completion_tokens, "cli": code, "leaked": leaked, "refused": refused,
}))
"""


def test_import_and_generate_without_the_converter_stack(
    kind_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    script = tmp_path / "device.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(kind_bundle())],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["leaked"] == []
    assert report["tokens"] > 0
    assert report["cli"] == 0
