"""Process-wide settings a busy listener needs: open files, and memory given back after bursts.

- `raise_open_file_limit()`: every SMTP session holds a socket; the usual soft limit of
  1,024 open files is reached long before the connection caps. The soft limit is raised
  to the hard limit (what an unprivileged process may do).
- `return_freed_memory()`: glibc raises its mmap threshold each time a large block is
  freed, so after a burst of big messages later large buffers come from the heap and
  the process keeps its peak size. A fixed threshold keeps every buffer over 128 KiB in
  its own mapping, unmapped when freed. Other C libraries: nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource

log = logging.getLogger("mta")

M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number
MMAP_THRESHOLD = 128 * 1024


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force.
    Logs a warning when it stays below `wanted` (the sessions the listener may hold)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open-file limit %d is below smtp.max_connections + 100 (%d): raise `ulimit -n`",
            soft,
            wanted,
        )
    return int(soft)


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold (see the module docstring); False where that is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
