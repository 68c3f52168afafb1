"""run_group.py [--int-as-term] CMD [ARGS...]: run a long-lived server (dagster dev, mlflow ui) so that
Ctrl-C or a SIGTERM stops it and every process it started.

`dagster dev` spawns a webserver, a daemon and code servers; a SIGTERM to `make` reached none of them and a
SIGINT left five processes behind (issue 13). Here the command runs in its own process group with the
default signal dispositions, and INT/TERM/HUP to this process go to that whole group. With --int-as-term,
Ctrl-C's INT goes on as TERM (make mlflow-ui): uvicorn, under mlflow ui, re-raises an INT after its clean
shutdown, which asyncio turns into a KeyboardInterrupt traceback; dagster dev shuts down more cleanly on INT
itself. Whatever is still alive after GRACE_S seconds (default 20) gets SIGKILL. Python, not bash: bash
cannot trap a signal that was ignored when it started (a server started from a background job or under
nohup), Python can.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _own_group_and_default_signals() -> None:  # runs in the child, before exec
    os.setpgrp()
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)


def main(argv: list[str]) -> int:
    int_as_term = bool(argv) and argv[0] == "--int-as-term"
    argv = argv[1:] if int_as_term else argv
    if not argv:
        print("usage: run_group.py [--int-as-term] CMD [ARGS...]", file=sys.stderr)
        return 2
    grace = float(os.environ.get("GRACE_S", "20"))
    child = subprocess.Popen(argv, preexec_fn=_own_group_and_default_signals)
    received: list[int] = []

    def forward(signum, _frame):  # only forward here: waiting inside a handler would deadlock on Popen's lock
        received.append(signum)
        os.killpg(child.pid, signal.SIGTERM if int_as_term and signum == signal.SIGINT else signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    while child.poll() is None and not received:
        time.sleep(0.1)
    if not received:  # the command ended on its own: take its leftovers with it
        if _group_alive(child.pid):
            os.killpg(child.pid, signal.SIGTERM)
        return child.returncode
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        child.poll()  # reap our own child, or it stays in the group as a zombie
        if not _group_alive(child.pid):
            return 0
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
