"""Repository config (the `config` object) and where a store's settings come from."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import msgpack

from .chunker import BLOB_CDC, STRUCTURE_CDC, CDCParams
from .errors import ConfigurationError

# 3: shuffled numeric blocks stored plane by plane (compress.ZSTD_PLANES); 2: manifests primed-zstd
# (manifest.pack), tree nodes narrowed (tree.narrow_node); 1: none of these
FORMAT_VERSION = 3
READ_FORMATS = (1, 2, 3)
DEFAULT_REPO = ".casstore"
ENV_REPO = "CASSTORE_REPO"
ENCRYPTIONS = ("aes-256-gcm", "chacha20-poly1305")   # AEADs of encrypted repositories (crypto.py); None: unencrypted


@dataclass(frozen=True)
class RepoConfig:
    """What a reader must know to interpret the repository; written once at init."""

    repo_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    format: int = FORMAT_VERSION
    hash: str = "blake3"
    compression: str = "zstd"
    structure_cdc: CDCParams = STRUCTURE_CDC
    blob_cdc: CDCParams = BLOB_CDC
    encryption: str | None = None   # one of ENCRYPTIONS or None; recorded at init, never changed
    gc_grace: float = 3600.0   # seconds between gc condemning a pack and deleting it (see gc.py)

    def encode(self) -> bytes:
        return msgpack.packb({
            "format": self.format, "id": self.repo_id, "hash": self.hash, "compression": self.compression,
            "chunker": {"structure": self.structure_cdc.to_dict(), "blob": self.blob_cdc.to_dict()},
            "encryption": self.encryption, "gc_grace": self.gc_grace,
        }, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes, where: str) -> "RepoConfig":
        try:
            d = msgpack.unpackb(data, raw=False)
            cfg = cls(repo_id=str(d["id"]), format=int(d["format"]), hash=d["hash"], compression=d["compression"],
                      structure_cdc=CDCParams.from_dict(d["chunker"]["structure"]),
                      blob_cdc=CDCParams.from_dict(d["chunker"]["blob"]), encryption=d.get("encryption"),
                      gc_grace=float(d.get("gc_grace", 3600.0)))
        except (KeyError, TypeError, ValueError, msgpack.UnpackException) as e:
            raise ConfigurationError(f"{where}: repository config is unreadable: {e}") from e
        if cfg.format not in READ_FORMATS:
            raise ConfigurationError(f"{where}: repository format {cfg.format} is not supported "
                                     f"(this casstore reads {', '.join(map(str, READ_FORMATS))})")
        if cfg.hash != "blake3" or cfg.compression != "zstd":
            raise ConfigurationError(f"{where}: unsupported hash {cfg.hash!r} or compression {cfg.compression!r}")
        if cfg.encryption is not None and cfg.encryption not in ENCRYPTIONS:
            raise ConfigurationError(f"{where}: repository is encrypted with {cfg.encryption!r}, which this version cannot open")
        return cfg

    def to_dict(self) -> dict:
        return {"format": self.format, "id": self.repo_id, "hash": self.hash, "compression": self.compression,
                "chunker": {"structure": self.structure_cdc.to_dict(), "blob": self.blob_cdc.to_dict()},
                "encryption": self.encryption, "gc_grace": self.gc_grace}


def resolve_url(url: str | None) -> tuple[str, str]:
    """The repository URL and where it came from: argument, $CASSTORE_REPO or default."""
    if url:
        return str(url), "argument"
    if os.environ.get(ENV_REPO):
        return os.environ[ENV_REPO], f"env {ENV_REPO}"
    return DEFAULT_REPO, "default"


def cache_dir() -> str:
    """Per-user cache root for indexes of remote repositories: $CASSTORE_CACHE_DIR, else the XDG cache."""
    explicit = os.environ.get("CASSTORE_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "casstore")
