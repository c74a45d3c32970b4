"""A Hugging Face hub id: downloaded when online, refused at once when offline."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from converters.errors import HubUnavailable, SourceError
from converters.sources import PreparedSource
from converters.sources.hf_folder import check_model_folder, read_license
from edge_runtime.bundle import Source

HUB_HOST = "huggingface.co"
PROBE_TIMEOUT_S = 3.0


def _connect(host: str, timeout: float) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(host: str = HUB_HOST, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Return True when a TCP connection to the hub opens within ``timeout`` seconds.

    The name lookup is not bounded by the socket timeout, so the probe runs in a daemon
    thread and is abandoned when the time is up.
    """
    result: list[bool] = []
    probe = threading.Thread(target=lambda: result.append(_connect(host, timeout)), daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(result and result[0])


def _offline_env() -> bool:
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


class HubSource:
    """Download a repository snapshot (weights, config, tokenizer) into the work dir."""

    def __init__(self, repo_id: str, revision: str | None = None) -> None:
        self.repo_id = repo_id
        self.revision = revision

    def _check_online(self) -> None:
        why = "HF_HUB_OFFLINE is set" if _offline_env() else None
        if why is None and not hub_reachable():
            why = f"{HUB_HOST} cannot be reached"
        if why:
            raise HubUnavailable(
                f"{self.repo_id}: no such file or folder, and the Hugging Face hub is offline "
                f"({why}); give a local model folder or .gguf file"
            )

    def prepare(self, work_dir: Path, *, trust_remote_code: bool = False) -> PreparedSource:
        self._check_online()
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError

        try:
            info = HfApi().model_info(self.repo_id, revision=self.revision)
            folder = Path(
                snapshot_download(
                    self.repo_id,
                    revision=info.sha,
                    local_dir=work_dir / "hub",
                    allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "README.md"],
                )
            )
        except HfHubHTTPError as exc:
            raise SourceError(f"{self.repo_id}: download failed ({exc})") from exc
        check_model_folder(folder)
        facts = Source(kind="hub", id=self.repo_id, revision=info.sha, license=read_license(folder))
        return PreparedSource(hf_dir=folder, facts=facts)
