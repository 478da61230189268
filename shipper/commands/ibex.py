"""`logship run --ibex`: a Nightingale ibex task's script under the agent, with no change to Nightingale.

Categraf writes each ibex task's script to `<metadir>/<task id>/script` and runs `sh -c '<script> <args>'`;
no task id reaches the environment. So the id comes from the script's path, the host from this machine,
and the log is `ibex-<id>/<host>` (names.ibex_task), labelled `source=ibex`. docs/ibex.md shows the one
line an operator puts at the top of a script.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from shipper.config import DEFAULT_CONFIG_FILE
from shipper.errors import LogExists, LogshipError
from shipper.format import names

# Set for the script: the task id of its log. A nested `logship run --ibex` (a script whose re-exec line
# runs again under the agent) sees it and runs the script directly, so there is never a second agent.
GUARD_ENV = "LOGSHIP_IBEX_TASK"
# Categraf runs scripts from the account's home directory, where no ./logship.yaml is: without --config
# (or $LOGSHIP_CONFIG), the agent reads the system config the services use, when it exists.
SYSTEM_CONFIG = "/etc/logship/logship.yaml"
SCRIPT_NAME = "script"  # Categraf's `<metadir>/<id>/script` (script.bat on Windows, which logship does not run on)
SHELL = "/bin/sh"  # what runs a script whose own first line starts logship (as Categraf's `sh -c` would)
MAX_RUNS = 1000  # runs of one ibex task on one host (the first and Nightingale's redos) we look through
_ID_RE = re.compile(r"0|[1-9][0-9]{0,18}")


def find_script(command: list[str]) -> tuple[int, Path]:
    """The ibex task id and script path in `command`: the first argument, or word of a `sh -c` string,
    that names a file `<metadir>/<digits>/script`."""
    for arg in command:
        for word in _words(arg):
            path = Path(os.path.abspath(word))
            if path.name == SCRIPT_NAME and _ID_RE.fullmatch(path.parent.name):
                return int(path.parent.name), path
    raise LogshipError(
        f"--ibex: no ibex script (<metadir>/<task id>/script) in the command {shlex.join(command)!r}",
        "Categraf runs <metadir>/<task id>/script; make its first line "
        "'#!/usr/bin/env -S logship run --ibex -- /bin/sh' (docs/ibex.md), or give --task instead of --ibex")


def _words(arg: str) -> list[str]:
    if not any(c.isspace() for c in arg):
        return [arg]
    try:
        return shlex.split(arg)  # the string of `sh -c '/meta/42/script 'a' 'b''`
    except ValueError:
        return arg.split()


def runnable(command: list[str], script: Path) -> list[str]:
    """`command`, or `/bin/sh` + `command` when it would execute the script itself and the script's first
    line starts logship (`#!/usr/bin/env -S logship run --ibex --`): executing it would start the agent
    again, for ever. The shell reads that first line as a comment."""
    if Path(os.path.abspath(command[0])) != script:
        return command
    try:
        with open(script, "rb") as f:
            first = f.readline(512)
    except OSError:
        return command
    return [SHELL, *command] if first.startswith(b"#!") and b"logship" in first else command


def config_file(given: str | None) -> str | None:
    if given is None and not Path(DEFAULT_CONFIG_FILE).is_file() and Path(SYSTEM_CONFIG).is_file():
        return SYSTEM_CONFIG
    return given


def run(config: str | None, host: str | None, command: list[str], labels: dict[str, str],
        silence: tuple[str | None, str | None, str | None] = (None, None, None),
        merge_streams: bool | None = None) -> int:
    """Run an ibex script under the agent as log `ibex-<id>/<host>` (a redo: `ibex-<id>.<n>`). `silence`:
    the --silence-timeout, --on-silence and --silence-grace flags, and `merge_streams` --merge-streams
    (None: not given), over the config's agent.* keys."""
    if not command:
        raise LogshipError("no command to run", "usage: logship run --ibex -- CMD [ARGS...] (docs/ibex.md)")
    ibex_id, script = find_script(command)
    command = runnable(command, script)
    outer = names.parse_ibex_task(os.environ.get(GUARD_ENV, ""))
    if outer is not None and outer[0] == ibex_id:
        return _exec(command)  # already under an agent for this task (a re-exec line ran twice)

    from shipper import agent
    from shipper.config import load_config
    from shipper.liveness import policy_for

    cfg = load_config(config_file(config))
    policy = policy_for(cfg.agent, *silence)
    host = names.check_id("host", host or agent.default_host())
    labels = {**labels, "source": "ibex", "ibex_id": str(ibex_id)}
    for n in range(1, MAX_RUNS + 1):
        task = names.ibex_task(ibex_id, n)
        if names.spool_log_dir(cfg.spool_dir, task, host).exists():
            continue  # an earlier run on this host (Nightingale's redo runs the same task again)
        os.environ[GUARD_ENV] = task  # the script inherits it
        try:
            # In Categraf's process group: its kill action, SIGKILL to the group, must stop the script.
            return agent.run(cfg, task, host, command, labels, own_group=False, silence=policy,
                             merge_streams=merge_streams)
        except LogExists:
            continue  # claimed by another run just now; the task has not started
    raise LogExists(f"ibex task {ibex_id} has {MAX_RUNS} runs on {host} in the spool {cfg.spool_dir}",
                    "the watcher removes shipped runs after 7 days; check that `logship watch` runs")


def _exec(command: list[str]) -> int:
    sys.stdout.flush()
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        print(f"logship: command not found: {command[0]}", file=sys.stderr)
        return 127
    except OSError as exc:
        print(f"logship: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 126
    raise AssertionError("unreachable")
