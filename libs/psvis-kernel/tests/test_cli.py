"""The psvis CLI as a user's shell runs it."""

from __future__ import annotations

import subprocess
import sys


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    """`psvis ... | head`: the pipe closes before the command writes; it stops quietly."""
    command = [sys.executable, "-m", "psvis.cli.main", "asyncapi", "--json"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
