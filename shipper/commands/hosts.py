"""Which host's log `cat`, `tail` and `download` read when --host is not given, and the errors that say
which hosts a task has logs on when the one asked for has none: a task id with no log is an error of its own,
never a silent empty answer."""

from __future__ import annotations

from shipper.errors import LogshipError
from shipper.store import Store

MAX_NAMED = 10  # hosts named in a message; the rest are counted


def pick(command: str, task: str, asked: str | None, tried: str, hosts: list[str], more: int, where: str,
         hint_none: str) -> str:
    """After `tried` (--host, else this machine's name) had no log of `task`: the task's only host when
    --host was not given. Otherwise raise the error that names the hosts the task has logs on (the first
    MAX_NAMED of `hosts`, then `more` counted), or says it has none (`hint_none` is its hint). `command`
    is the command line the hint shows with a --host added; `where` says which store or API was asked,
    e.g. " in s3://logs"."""
    others = [h for h in hosts if h != tried]
    if asked is None and len(others) == 1 and not more:
        return others[0]
    if not others:
        if tried in hosts:  # its manifest was there a moment ago: deleted meanwhile (gc)
            raise LogshipError(f"no log {task}/{tried}{where}", "it was deleted meanwhile (retention?): run "
                               "the command again to see what there is")
        raise LogshipError(f"no log of task {task}{where}", hint_none)
    named = ", ".join(others[:MAX_NAMED])
    if left := max(0, len(others) - MAX_NAMED) + more:
        named += f" and {left} more"
    example = f"`{command} --host {others[0]}`"
    if asked is None:
        raise LogshipError(f"task {task} ran on {len(others) + more} hosts: {named}; --host says which",
                           f"pick one with --host H, e.g. {example}")
    raise LogshipError(f"no log {task}/{asked}{where}; task {task} ran on {named}",
                       f"pick one of them with --host H, e.g. {example}")


async def store_host(store: Store, url: str, command: str, task: str, asked: str | None, tried: str) -> str:
    """`pick` over the hosts the store holds logs of `task` on (`url`: the store's, for messages)."""
    from shipper.format.hosts import hosts_of

    found = await hosts_of(store, task, want=MAX_NAMED + 1)
    return pick(command, task, asked, tried, found.hosts, found.unchecked, f" in {url}",
                "check the task id (ids are case-sensitive) and that `logship watch` runs on its hosts: "
                "a log reaches the store within watch.checkpoint_seconds of its start")
