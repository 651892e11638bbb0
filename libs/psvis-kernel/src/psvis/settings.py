"""Run-time settings from flags and PSVIS_* environment variables, with sensible defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _default_rules_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("PSVIS_RULES_DIR", "").split(os.pathsep) if p]
    dirs.append(Path.cwd() / "rules")
    dirs.append(Path(__file__).resolve().parents[4] / "rules")  # the source checkout
    return dirs


@dataclass
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("PSVIS_DATA_DIR", ".psvis")))
    city: str = field(default_factory=lambda: os.environ.get("PSVIS_CITY", "wuhan"))
    listen: str = field(default_factory=lambda: os.environ.get("PSVIS_LISTEN", "127.0.0.1:50051"))
    backend: str = field(default_factory=lambda: os.environ.get("PSVIS_BACKEND", "embedded"))
    kafka_bootstrap: str = field(
        default_factory=lambda: os.environ.get("PSVIS_KAFKA_BOOTSTRAP", "")
    )
    mongo_url: str = field(default_factory=lambda: os.environ.get("PSVIS_MONGO_URL", ""))
    namespace: str = field(default_factory=lambda: os.environ.get("PSVIS_NAMESPACE", "psvis"))
    rules_dirs: list[Path] = field(default_factory=_default_rules_dirs)
    # the services this process serves (one Deployment per service); empty: every one
    services: list[str] = field(
        default_factory=lambda: [
            s.strip() for s in os.environ.get("PSVIS_SERVICES", "").split(",") if s.strip()
        ]
    )
    # Prometheus scrapes http://<metrics_listen>/metrics; empty: no endpoint (psvis.metrics)
    metrics_listen: str = field(
        default_factory=lambda: os.environ.get("PSVIS_METRICS_LISTEN", "127.0.0.1:9464")
    )
    metrics_interval: float = 5.0  # how often the projection lag is looked at, in seconds
    notary_every: int = 1000
    notary_interval: float = 2.0

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"

    @property
    def notary_key(self) -> Path:
        return self.data_dir / "keys" / "notary.key"

    @property
    def sqlite_path(self) -> Path:
        """The embedded log, stream index and notary checkpoints."""
        return self.data_dir / "psvis.db"

    @property
    def read_models_path(self) -> Path:
        """The embedded read models: a file of their own, so that projection writes never wait
        on appends (SQLite has one writer per file), and deleting it only costs a replay."""
        return self.data_dir / "read-models.db"
