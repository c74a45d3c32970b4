"""Bundle format: manifest, verification."""

from edge_runtime.bundle.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    Architecture,
    FileEntry,
    GraphSpec,
    Manifest,
    Quantization,
    Source,
    read_manifest,
)
from edge_runtime.bundle.verify import sha256_file, verify_bundle

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Architecture",
    "FileEntry",
    "GraphSpec",
    "Manifest",
    "Quantization",
    "Source",
    "read_manifest",
    "sha256_file",
    "verify_bundle",
]
