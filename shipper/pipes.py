"""The task's pipes as the agent's pump sees them: a stream's state, its pass-through, the read sizes.

shipper/agent.py polls and spools; this holds what one pipe needs on its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select

# Reads start small and grow while they come back full: a 1 MiB read costs a fresh mmap'd buffer
# (~18 us) even when the pipe holds a few bytes, but moves bulk output with a sixteenth of the calls.
SMALL_READ, BIG_READ = 64 << 10, 1 << 20
PIPE_SIZE = 1 << 20  # enlarged to match BIG_READ: a 1 MiB read on a 64 KiB pipe is 2.5x slower
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Stream:
    """One of the task's pipes: where its bytes are teed to, and its unterminated tail."""

    def __init__(self, code: int, fd: int, out_fd: int) -> None:
        self.code = code
        self.fd = fd
        self.out_fd = out_fd  # -1 once our own output is gone (EPIPE): keep spooling regardless
        self.tail = bytearray()
        self.tail_since = 0.0
        self.read_size = SMALL_READ

    def enlarge(self) -> None:
        with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size: smaller reads still work
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, PIPE_SIZE)

    def tee(self, data: bytes) -> None:
        """Pass `data` through to our own output; a closed or full output costs only the pass-through."""
        if self.out_fd < 0:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.out_fd, view):]
            except BlockingIOError:
                select.select([], [self.out_fd], [])
            except OSError as exc:  # our own output is closed (EPIPE) or broken: the spool still gets it
                if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                    return  # our output is a file on a full disk: this piece is lost there, not in the spool
                if exc.errno not in (errno.EPIPE, errno.EBADF, errno.EIO):
                    raise
                self.out_fd = -1
                return


class Clock:
    """When the task last wrote, until the monitor's own clock (liveness.Silence) takes over."""

    __slots__ = ("last_output",)

    def __init__(self, now: float) -> None:
        self.last_output = now
