"""The two consoles every command prints on, and the platform's Settings from the command line
(data folder, backend, stores) for the commands that work on them here: serve, audit, certs."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from psvis.settings import Settings

out = Console(soft_wrap=True)  # what a command reports: its results, on stdout
console = Console(stderr=True, soft_wrap=True)  # errors, the server's banner and progress bars


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings()
    for name in (
        "data_dir",
        "city",
        "listen",
        "backend",
        "kafka_bootstrap",
        "mongo_url",
        "namespace",
        "services",
    ):
        value = getattr(args, name, None)
        if value:
            setattr(s, name, value)
    metrics_listen = getattr(args, "metrics_listen", None)
    if metrics_listen is not None:  # '' turns the endpoint off
        s.metrics_listen = metrics_listen
    return s


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, help="embedded data folder (env PSVIS_DATA_DIR; default .psvis)"
    )
    parser.add_argument(
        "--backend", choices=["embedded", "distributed"], help="env PSVIS_BACKEND; default embedded"
    )
    parser.add_argument(
        "--kafka-bootstrap", help="distributed: Kafka bootstrap servers (env PSVIS_KAFKA_BOOTSTRAP)"
    )
    parser.add_argument("--mongo-url", help="distributed: MongoDB URL (env PSVIS_MONGO_URL)")
    parser.add_argument(
        "--namespace", help="distributed: topic and collection prefix (default psvis)"
    )
