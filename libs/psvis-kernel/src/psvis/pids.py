"""Files and folders named with the process writing them: its pid and its machine's name.

A process killed outright (SIGKILL, a power cut) cannot remove what it was writing; with its pid
in the name, a later process on the same machine can tell a dead writer's leftovers from a
running one's. A folder may be shared by several machines (a network volume): a pid there says
nothing about another machine's processes, so what they left is kept.
"""

from __future__ import annotations

import os
import re
import socket

# this machine's name, as it goes into file names
HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "localhost"
# owner() in a name: its groups are the pid and the machine (None in names from before machines)
OWNER = r"(\d+)(?:@([A-Za-z0-9.-]+))?"


def owner() -> str:
    """This process, as names of what it writes give it: `<pid>@<machine>`."""
    return f"{os.getpid()}@{HOST}"


def ended(pid: str, host: str | None) -> bool:
    """Whether the owner a name gives (OWNER's groups) is known to have ended: it ran on this
    machine (or the name does not say) and its pid runs nothing now."""
    return (host is None or host == HOST) and not running(int(pid))


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
