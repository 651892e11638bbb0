"""The psvis CLI as a user's shell runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from psvis.pki import ensure_dev_pki

# psvis serve on ports the system picks, so that no test waits on a port another holds
SERVE = ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    """`psvis ... | head`: the pipe closes before the command writes; it stops quietly."""
    command = [sys.executable, "-m", "psvis.cli.main", "asyncapi", "--json"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_rules_check_names_packs_it_cannot_read_and_prints_brackets(tmp_path) -> None:
    (tmp_path / "minimal.toml").write_text("x = 1\n")
    packs = [tmp_path / "minimal.toml", tmp_path / "missing.toml", tmp_path]
    run = subprocess.run(
        [sys.executable, "-m", "psvis.cli.main", "rules", "check", *map(str, packs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "a [pack] table with city and name is required" in run.stdout  # the report
    assert "missing.toml: cannot be read" in run.stdout
    assert f"{tmp_path}: cannot be read" in run.stdout


def test_certs_issue_never_overwrites_the_ca_or_server_files(tmp_path) -> None:
    from psvis.pki import ensure_dev_pki

    pki = tmp_path / "pki"
    ensure_dev_pki(pki)
    kept = {p.name: p.read_bytes() for p in pki.iterdir()}
    for agency in ("server", "ca", "../escape", ""):
        run = subprocess.run(
            [sys.executable, "-m", "psvis.cli.main", "certs", "issue", agency, "police",
             "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == kept
    assert not (tmp_path / "escape.crt").exists()
    ok = subprocess.run(
        [sys.executable, "-m", "psvis.cli.main", "certs", "issue", "district-7", "police",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert (pki / "district-7.crt").is_file() and (pki / "ca.crt").read_bytes() == kept["ca.crt"]


def test_registry_commands_refuse_bad_arguments_before_calling(tmp_path) -> None:
    """Each fails with one line (no server is needed to find out), never a traceback."""
    cases = [
        (["register", "--data", '{"nope": 1}'], "does not fit SystemRegistered"),
        (["register", "--data", "[1, 2]"], "does not fit SystemRegistered"),
        (["register", "--file", str(tmp_path / "missing.json")], "No such file"),
        (["register", "--file", str(tmp_path)], "--file"),
        (["archive", "gate-1", "--on", "2024-01-01", "--kind", "design", "--title", "t", "--document", str(tmp_path / "x")],
         "No such file"),
        (["list", "--limit", "-1"], "from 1 to 1000"),
        (["use", "gate-1", "--on", "2024-01-01", "--expected-version", "-1"], "whole number"),
        (["classify", "gate-1", "--level", "-3"], "from 0 to 5"),
    ]  # fmt: skip
    for args, message in cases:
        run = subprocess.run(
            [sys.executable, "-m", "psvis.cli.main", "registry", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 2 and "Traceback" not in run.stderr, (args, run.stderr)
        assert message in run.stderr, (args, run.stderr)


def test_a_command_line_that_does_not_parse_is_a_usage_error_also_in_json() -> None:
    """argparse's errors (unknown flag, missing argument, bad value) exit 2 with the usage on
    stderr; under --json, stdout also carries the error, as for every other failure."""
    cases = [  # (argv, the error, the usage printed: the command's own where one is named)
        (["registry", "list", "--json", "--no-such-flag"], "unrecognized arguments: --no-such-flag",
         "usage: psvis registry list [-h]"),
        (["registry", "use", "--json"], "the following arguments are required",
         "usage: psvis registry use [-h]"),
        (["audit", "verify", "--json", "--max-unsigned", "many"], "--max-unsigned",
         "usage: psvis audit verify [-h]"),
        (["registry", "list", "--js", "--bogus"], "unrecognized arguments: --bogus",  # --json, abbreviated
         "usage: psvis registry list [-h]"),
        (["registry", "--json", "nosuch"], "invalid choice: 'nosuch'", "usage: psvis registry [-h]"),
    ]  # fmt: skip
    for args, message, usage in cases:
        run = subprocess.run(
            [sys.executable, "-m", "psvis.cli.main", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 2 and "Traceback" not in run.stderr, (args, run.stderr)
        assert run.stderr.startswith(usage) and message in run.stderr, (args, run.stderr)
        error = json.loads(run.stdout)["error"]
        assert error["code"] == "USAGE" and message in error["message"], (args, error)
    plain = subprocess.run(
        [sys.executable, "-m", "psvis.cli.main", "registry", "list", "--no-such-flag"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert plain.returncode == 2 and plain.stdout == "" and "unrecognized" in plain.stderr


def test_rules_check_without_packs_checks_those_the_platform_would_find(tmp_path) -> None:
    """Run outside the checkout (no ./rules there): the checkout's packs, and PSVIS_RULES_DIR's."""
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "broken.toml").write_text("[pack]\ncity = 'x'\n")
    env = {**os.environ, "PSVIS_RULES_DIR": str(tmp_path / "extra")}
    run = subprocess.run(
        [sys.executable, "-m", "psvis.cli.main", "rules", "check", "--json"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    checked = {Path(r["pack"]).name: r["ok"] for r in json.loads(run.stdout)}
    assert checked["wuhan.toml"] and checked["xian.toml"], checked
    assert checked["broken.toml"] is False and run.returncode == 1


def test_the_serve_banner_tells_clients_where_a_non_default_server_is() -> None:
    from psvis.cli.serve import _client_flags
    from psvis.settings import Settings

    default = Settings(data_dir=Path(".psvis"), listen="127.0.0.1:50051")
    assert _client_flags(default, 50051) == "--as dev-police"
    moved = Settings(data_dir=Path("/srv/psvis"), listen="0.0.0.0:7000")
    assert (
        _client_flags(moved, 7000) == "--as dev-police --server localhost:7000 --pki /srv/psvis/pki"
    )
    ipv6 = Settings(data_dir=Path(".psvis"), listen="[::1]:0")
    assert _client_flags(ipv6, 41234) == "--as dev-police --server [::1]:41234"


def test_what_the_machine_or_the_data_folder_says_is_one_line_not_a_traceback(tmp_path) -> None:
    """A data folder that is a file, a log that is not a database, a server key that is not
    PEM, a payload that is not a JSON object, a rule pack that is not UTF-8: each is said in
    one line, with exit 1 or 2."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "psvis.db").write_bytes(b"not a database, not at all\n" * 100)
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[pack]\n")
    ensure_dev_pki(tmp_path / "bad-key" / "pki")
    (tmp_path / "bad-key" / "pki" / "server.key").write_text("not a key\n")
    cases = [
        ([*SERVE, "--data-dir", str(tmp_path / "a-file")], "a-file"),
        ([*SERVE, "--data-dir", str(tmp_path / "damaged")], "not a database"),
        ([*SERVE, "--data-dir", str(tmp_path / "bad-key")],
         "server.key is not a valid PEM private key"),
        ([*SERVE, "--data-dir", str(tmp_path / "svc"), "--services", "registry,ingest"],
         "no service named ingest (installed: registry)"),
        (["registry", "register", "--data", "5"], "a JSON object is wanted"),
        (["rules", "check", str(tmp_path / "bin.toml")], "not UTF-8"),
    ]  # fmt: skip
    for args, message in cases:
        run = subprocess.run(
            [sys.executable, "-m", "psvis.cli.main", *args],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        assert run.returncode in (1, 2) and "Traceback" not in run.stderr, (args, run.stderr)
        assert message in run.stderr + run.stdout, (args, run.stderr, run.stdout)


TLS_DAMAGES = {
    "missing": (lambda path: path.unlink(), "is missing"),
    "unreadable": (lambda path: (path.unlink(), path.mkdir()), "cannot be read: Is a directory"),
    "not-pem": (lambda path: path.write_text("not PEM at all\n"), "is not a valid PEM"),
}


@pytest.mark.parametrize("damage", list(TLS_DAMAGES))
@pytest.mark.parametrize(
    ("command", "file"),
    [
        (SERVE, "server.crt"),
        (SERVE, "server.key"),
        (["registry", "list", "--server", "localhost:1", "--as", "dev-unit"], "dev-unit.key"),
        (["registry", "list", "--server", "localhost:1", "--as", "dev-unit"], "ca.crt"),
        (["certs", "issue", "district-7", "police"], "ca.crt"),
    ],
    ids=[
        "serve-server.crt",
        "serve-server.key",
        "client-dev-unit.key",
        "client-ca.crt",
        "certs-issue-ca.crt",
    ],
)
def test_a_tls_file_missing_unreadable_or_not_pem_is_a_client_error_naming_it(
    tmp_path: Path, command: list[str], file: str, damage: str
) -> None:
    """The user's TLS configuration is wrong, whichever way: one exit status (2, CLIENT_ERROR,
    a problem found before calling) and one line naming the file and what is wrong with it."""
    data = tmp_path / "data"
    pki = ensure_dev_pki(data / "pki")
    spoil, problem = TLS_DAMAGES[damage]
    spoil(pki / file)
    client = command[0] == "registry"
    where = ["--pki", str(pki), "--json"] if client else ["--data-dir", str(data)]
    run = subprocess.run(
        [sys.executable, "-m", "psvis.cli.main", *command, *where],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"error: {pki / file} {problem}"), line
    if client:  # a script reading --json learns the same
        error = json.loads(run.stdout)["error"]
        assert error["code"] == "CLIENT_ERROR" and f"error: {error['message']}" == line, error


def test_serve_publishes_metrics_for_prometheus_and_stops_cleanly(tmp_path: Path) -> None:
    """`psvis serve` answers GET /metrics (Prometheus text) at --metrics-listen (port 0: one
    the system picks, which the banner names), and stops on SIGINT with the endpoint."""
    command = [sys.executable, "-m", "psvis.cli.main", *SERVE, "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        banner = ""
        while "stop with Ctrl-C" not in banner:
            line = proc.stderr.readline()
            assert line, f"serve ended: {banner}"
            banner += line
        found = re.search(r"metrics: +http://(127\.0\.0\.1:(\d+))/metrics", banner)
        assert found and found[2] != "0", banner
        url = f"http://{found[1]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/plain")
        assert 'psvis_projection_lag{psvis_projection="psvis.read-models"} 0.0' in text, text
        assert 'service_name="psvis"' in text
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)


def test_serve_refuses_a_metrics_address_it_cannot_listen_on_before_it_opens_anything(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        run = subprocess.run(
            [sys.executable, "-m", "psvis.cli.main", "serve", "--data-dir", str(tmp_path / "d"),
             "--listen", "127.0.0.1:0", "--metrics-listen", busy],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert f"cannot serve metrics on {busy}" in run.stderr
    assert "--metrics-listen" in run.stderr
    assert not (tmp_path / "d").exists()  # no data folder, no certificates, no key made
