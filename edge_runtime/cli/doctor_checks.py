"""The checks behind ``edge-runtime doctor``: each returns a Finding (and what it learned)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import devices
from devices import BoardInfo, Profile, ProfileError
from edge_runtime.bundle.manifest import Manifest
from edge_runtime.bundle.verify import verify_bundle
from edge_runtime.cli.doctor_broker import probe_broker, read_topic
from edge_runtime.cli.doctor_report import FAIL, OK, WARN, Finding
from edge_runtime.config import BrokerConfig, Config, resolve_secret
from edge_runtime.errors import BundleError
from edge_runtime.hugepages import (
    THP_ENABLED,
    THP_SIZE,
    assess,
    environment_with_tunable,
    glibc_version,
    huge_page_size,
    thp_mode,
)
from edge_runtime.service.telemetry import boot_digest

DEFAULT_BUNDLE_NAME = "qwen2.5-coder-0.5b-instruct-int4"
# Python, onnxruntime's arenas, tokenizers and the daemon's buffers. Measured here: the
# default Qwen2.5-Coder-0.5B int4 bundle (390 MB) peaked at 777 MB RSS in `edge-runtime run`.
RUNTIME_OVERHEAD_MB = 400
_KV_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_MB = 1024 * 1024


def default_bundle() -> Path:
    """Return where ``edge-runtime prepare-default`` puts the default bundle."""
    models = os.environ.get("EDGE_RUNTIME_MODELS")
    return (Path(models) if models else Path("models")) / DEFAULT_BUNDLE_NAME


def check_board(root: Path) -> tuple[Finding, BoardInfo]:
    """Describe the board under ``root``."""
    board = devices.probe(root)
    cpu = f"{board.cpu_count or '?'} CPUs"
    if board.cpu_model:
        cpu += f" ({board.cpu_model})"
    mem = f"{board.mem_total_mb} MB RAM" if board.mem_total_mb else "memory unknown"
    name = board.model or "no device-tree model"
    if board.l4t_release:
        name += f", L4T {board.l4t_release}"
    simulated = " [simulated from " + str(root) + "]" if root.resolve() != Path("/") else ""
    return Finding("board", OK, f"{name}; {board.machine}, {cpu}, {mem}{simulated}"), board


def check_profile(config: Config, board: BoardInfo) -> tuple[Finding, Profile | None]:
    """Pick the profile the config names (or detect it) and apply the overrides."""
    name = config.device.profile
    try:
        profile = devices.choose(board) if name == "auto" else devices.load_profile(name)
        if config.device.overrides:
            profile = profile.merged(config.device.overrides)
    except ProfileError as exc:
        fix = "set [device] profile to one of " + ", ".join(devices.list_profiles())
        return Finding("profile", FAIL, str(exc), fix), None
    how = "detected" if name == "auto" else "from config"
    if config.device.overrides:
        how += ", with overrides " + ", ".join(sorted(config.device.overrides))
    threads = profile.effective_threads(board.cpu_count)
    summary = (
        f"{profile.name} ({how}): {' > '.join(profile.providers)}; {threads} threads, "
        f"{profile.default_quant}, context cap {profile.context_cap}, "
        f"budget {profile.memory_budget_mb} MB (MemoryMax {profile.memory_max_mb}M)"
    )
    return Finding("profile", OK, summary), profile


def check_runtime(profile: Profile | None, board: BoardInfo) -> Finding:
    """Compare this onnxruntime's providers with those the profile wants."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return Finding("onnxruntime", FAIL, f"cannot import: {exc}", "pip install onnxruntime")
    have = list(ort.get_available_providers())
    summary = f"{ort.__version__}; providers {', '.join(have)}"
    if profile is None:
        return Finding("onnxruntime", OK, summary)
    missing = [p for p in profile.providers if p not in have and p != "CPUExecutionProvider"]
    if not missing:
        return Finding("onnxruntime", OK, summary)
    fix = "install the onnxruntime-gpu build for this platform (docs/deployment.md)"
    if board.is_jetson:
        fix = (
            f"install NVIDIA's onnxruntime-gpu wheel for JetPack (L4T {board.l4t_release}) "
            "and this Python (docs/deployment.md, Jetson)"
        )
    summary += f"; profile wants {', '.join(missing)}: will run on the CPU"
    return Finding("onnxruntime", WARN, summary, fix)


def check_huge_pages(root: Path, profile: Profile | None = None) -> Finding:
    """Say whether the service will put the model's weights in transparent huge pages."""
    if profile is not None and "huge_pages" not in profile.memory:
        return Finding("huge pages", OK, f"off: not in profile {profile.name}'s memory policy")
    mode = thp_mode(root / THP_ENABLED.relative_to("/"))
    size = huge_page_size(root / THP_SIZE.relative_to("/"))
    glibc = glibc_version()
    state = assess(os.environ, mode, glibc, size)
    if state.active:
        return Finding("huge pages", OK, f"on: {state.reason}")
    env = environment_with_tunable(os.environ, mode, glibc, size)
    if env is not None:
        return Finding("huge pages", OK,
                       f"on: the service starts with GLIBC_TUNABLES={env['GLIBC_TUNABLES']}")
    return Finding("huge pages", OK, f"off: {state.reason}")


def check_bundle(bundle: Path | None) -> tuple[Finding, Manifest | None]:
    """Verify the bundle's manifest and every file's sha256."""
    if bundle is None:
        return Finding(
            "bundle", FAIL, "no model bundle configured",
            "run `edge-runtime prepare-default`, or pass --model / set [model] bundle",
        ), None
    try:
        manifest = verify_bundle(bundle)
    except BundleError as exc:
        return Finding(
            "bundle", FAIL, f"{bundle}: {exc.message}",
            "rebuild or re-copy the bundle (edge-runtime convert / prepare-default)",
        ), None
    size = sum(entry.size for entry in manifest.files.values()) / _MB
    quant = manifest.quantization
    summary = (
        f"{manifest.name}: {quant.method} ({quant.bits}-bit), {size:.0f} MB, "
        f"{len(manifest.files)} files verified (sha256)"
    )
    return Finding("bundle", OK, summary), manifest


def estimate_memory_mb(manifest: Manifest, context: int) -> tuple[int, int]:
    """Return (weights MB, KV cache MB at ``context`` tokens) for a bundle."""
    arch = manifest.architecture
    weights = sum(entry.size for entry in manifest.files.values()) / _MB
    per_value = _KV_BYTES.get(manifest.graph.kv_dtype, 4)
    kv = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * context * per_value / _MB
    return round(weights), round(kv)


def check_memory(manifest: Manifest, profile: Profile | None, board: BoardInfo) -> Finding:
    """Compare the bundle plus a full KV cache with the profile's budget and the board."""
    cap = profile.context_cap if profile else manifest.architecture.context_length
    context = min(manifest.architecture.context_length, cap)
    weights, kv = estimate_memory_mb(manifest, context)
    prefix = profile.prefix_cache_mb if profile else 0
    need = weights + kv + prefix + RUNTIME_OVERHEAD_MB
    summary = (f"~{need} MB needed ({weights} weights + {kv} KV at {context} tokens + "
               f"{prefix} prefix cache + runtime)")
    if board.mem_total_mb and need > board.mem_total_mb:
        return Finding("memory", FAIL, f"{summary} > {board.mem_total_mb} MB on the board",
                       "use a smaller or int4 model, or lower context_cap in [device] overrides")
    if profile is None:
        return Finding("memory", OK, summary)
    if need > profile.memory_max_mb:
        return Finding("memory", FAIL, f"{summary} > MemoryMax {profile.memory_max_mb} MB",
                       "use a smaller or int4 bundle, or lower context_cap")
    if need > profile.memory_budget_mb:
        return Finding("memory", WARN, f"{summary} > budget {profile.memory_budget_mb} MB",
                       "expect memory pressure; lower context_cap or use a smaller model")
    return Finding("memory", OK, f"{summary}, within budget {profile.memory_budget_mb} MB")


def check_broker(broker: BrokerConfig, timeout: float) -> Finding:
    """Connect to the broker with the configured credentials and TLS."""
    try:
        password = broker.password()
    except OSError as exc:
        path = resolve_secret(broker.password_file) if broker.password_file else None
        return Finding("broker", FAIL, f"cannot read the password file {path}: {exc.strerror}",
                       "create it (mode 0600) or pass it as a systemd credential")
    who = f" as {broker.username}" if broker.username else " anonymously"
    result = probe_broker(broker, password, timeout)
    target = f"{broker.url} (MQTT {broker.protocol}){who}"
    if result.ok:
        return Finding("broker", OK, f"{target}: {result.reason}")
    fix = "check [broker] url, and that the broker runs (systemctl status mosquitto)"
    if result.auth_refused:
        fix = "check [broker] username and password_file against the broker's password file"
    return Finding("broker", FAIL, f"{target}: {result.reason}", fix)


def check_device_id(config: Config, timeout: float, boot: str | None = None) -> Finding | None:
    """Watch the device's status topic briefly: is its id served from two places?

    Each daemon's status names the boot it runs in (a digest of the kernel's boot id) and
    its own instance, so an online status from another boot, or from two instances, is
    another daemon with this device id, as a copied SD card gives. Return None when the
    broker cannot be reached (the ``broker`` finding says why).
    """
    s = config.service
    topic = f"{s.topic_prefix}/{s.device_id}/status"
    try:
        password = config.broker.password()
    except OSError:
        return None
    connected, payloads = read_topic(config.broker, password, topic, min(timeout, 2.0),
                                     timeout)
    if not connected:
        return None
    statuses = []
    for payload in payloads:
        try:
            status = json.loads(payload)
        except ValueError:
            continue
        if isinstance(status, dict):
            statuses.append(status)
    if not statuses:
        return Finding("device id", OK, f"{s.device_id}: no daemon has announced it yet")
    return judge_statuses(s.device_id, statuses, boot_digest() if boot is None else boot)


def judge_statuses(device: str, statuses: list[dict[str, Any]], boot: str) -> Finding:
    """Decide from the status messages of one device id (the latest last)."""
    online = [st for st in statuses if st.get("state") == "online"]
    foreign = [st for st in online if st.get("boot") and st.get("boot") != boot]
    instances = {st.get("instance") for st in online if st.get("instance")}
    fix = ("give each board its own [service] device_id (a copied SD card keeps the old one);"
           " run doctor on the board itself")
    if foreign:
        other = foreign[-1]
        return Finding("device id", FAIL, f"{device} is online from another machine (host "
                       f"{other.get('host', '?')}, daemon {other.get('instance')}): two boards "
                       "with one device id take each other's broker session", fix)
    if len(instances) > 1:
        return Finding("device id", FAIL, f"{device} is announced by {len(instances)} daemons "
                       "at once: they take each other's broker session", fix)
    latest = statuses[-1]
    fights = sum(int(latest.get(name) or 0)
                 for name in ("session_takeovers", "short_connections"))
    if fights:
        return Finding("device id", WARN, f"{device}: its daemon lost its broker session "
                       f"{fights} time(s) soon after connecting: another client may use its "
                       "client id", "look for a second device with this device_id or "
                       "broker.client_id")
    where = "this machine" if latest.get("boot") == boot else f"host {latest.get('host', '?')}"
    return Finding("device id", OK, f"{device}: last status {latest.get('state')} from {where}")
