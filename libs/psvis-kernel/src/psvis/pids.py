"""Files and folders named with the pid of the process writing them.

A process killed outright (SIGKILL, a power cut) cannot remove what it was writing; with its pid
in the name, a later process can tell a dead writer's leftovers from a running one's.
"""

from __future__ import annotations

import os


def running(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (another user's included)."""
    if pid <= 0:
        return True  # not a process's id: os.kill would signal a group; keep what it names
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, and is someone else's
    except OverflowError:
        return False  # no process has such an id
    return True
