"""Verify a bundle before anything in it is loaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edge_runtime.bundle.manifest import MANIFEST_NAME, Manifest, read_manifest
from edge_runtime.bundle.onnx_refs import external_data_locations
from edge_runtime.errors import BundleError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_name(bundle_dir: Path, name: str) -> Path:
    """Refuse names that could leave the bundle: separators, '..', absolute paths, links."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise BundleError(f"file name {name!r} is not a plain name inside the bundle", bundle_dir)
    path = bundle_dir / name
    if path.is_symlink():
        raise BundleError("is a symbolic link; bundles hold only regular files", path)
    return path


def _check_files(bundle_dir: Path, manifest: Manifest) -> None:
    for name, entry in sorted(manifest.files.items()):
        path = _check_name(bundle_dir, name)
        if not path.is_file():
            raise BundleError("listed in the manifest but missing", path)
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(f"size {size} does not match the manifest ({entry.size})", path)
        if sha256_file(path) != entry.sha256:
            raise BundleError("sha256 does not match the manifest (modified or corrupt)", path)


def _check_required(bundle_dir: Path, manifest: Manifest) -> None:
    required = [manifest.model_file, manifest.tokenizer_file, manifest.generation_file]
    if manifest.chat_template_file:
        required.append(manifest.chat_template_file)
    for name in required:
        if name not in manifest.files:
            raise BundleError("required file is not listed in the manifest", bundle_dir / name)


def _check_external_data(bundle_dir: Path, manifest: Manifest) -> None:
    model = bundle_dir / manifest.model_file
    for location in sorted(external_data_locations(model)):
        if location not in manifest.files:
            raise BundleError(
                f"external data {location!r} is outside the bundle or not in its manifest",
                model,
            )


def verify_bundle(bundle_dir: Path | str, *, check_hashes: bool = True) -> Manifest:
    """Check a bundle against its manifest and return the manifest.

    Raises :class:`BundleError` naming the file at fault when a listed file is missing,
    altered or not a plain file inside the bundle, or when the model's external data
    points anywhere the manifest does not vouch for.
    """
    root = Path(bundle_dir)
    manifest = read_manifest(root)
    if MANIFEST_NAME in manifest.files:
        raise BundleError("the manifest must not list itself", root / MANIFEST_NAME)
    _check_required(root, manifest)
    if check_hashes:
        _check_files(root, manifest)
    else:
        for name in manifest.files:
            if not _check_name(root, name).is_file():
                raise BundleError("listed in the manifest but missing", root / name)
    _check_external_data(root, manifest)
    return manifest
