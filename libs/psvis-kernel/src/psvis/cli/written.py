"""`audit replay --into FILE`: the replay is written beside FILE and put there only once whole.

The file being written is `.FILE.<pid>@<machine>.<random>.partial` (pids.owner()): a replay
killed outright (SIGKILL, a power cut) cannot remove it, and the writer in its name lets a later
replay into the same FILE on the same machine tell it from a running replay's, and remove it.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from psvis import pids
from psvis.cli.client import CliError

SQLITE_BESIDE = ("-wal", "-shm", "-journal")  # what SQLite may leave beside a database file


@contextmanager
def written_whole(target: Path) -> Iterator[str]:
    """A new file beside `target` to write, put at `target` once the block succeeds and
    removed if it fails (or is interrupted): a replay that fails leaves no half-written file.

    A file that appeared at `target` meanwhile is kept, as one there before is (CliError).
    What replays into `target` that were killed left beside it is removed first.
    """
    remove_dead_partials(target)
    written = target.with_name(f".{target.name}.{pids.owner()}.{secrets.token_hex(4)}.partial")
    try:
        yield str(written)
        _put_in_place(written, target)
    finally:
        for end in ("", *SQLITE_BESIDE):  # SQLite's, should it have left them
            Path(f"{written}{end}").unlink(missing_ok=True)


def remove_dead_partials(target: Path) -> None:
    """Remove the partial files (and SQLite's beside them) of replays into `target` whose
    process has ended; those of a running process, of another machine's, or of one that
    cannot be told, stay."""
    partial = re.compile(
        rf"\.{re.escape(target.name)}\.{pids.OWNER}\.[0-9a-f]+\.partial"
        rf"(?:{'|'.join(SQLITE_BESIDE)})?"
    )
    for path in target.parent.iterdir():  # not a glob: FILE may hold [, * or ?
        found = partial.fullmatch(path.name)
        if found is not None and pids.ended(*found.groups()):
            path.unlink(missing_ok=True)  # another replay may be removing it too


def _put_in_place(written: Path, target: Path) -> None:
    appeared = CliError(f"{target} appeared while the replay ran; it is left as it was")
    try:
        os.link(written, target)  # unlike a rename, it never replaces a file at target
    except FileExistsError:
        raise appeared from None
    except OSError:  # a file system without hard links (FAT): a rename, if nothing is there
        if target.exists():
            raise appeared from None
        written.rename(target)
