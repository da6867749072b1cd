"""``reencrypt embedded-redis``: see and stop the embedded Redis of ``$REENCRYPT_HOME``.

Without ``REDIS_URL`` the first command that needs a broker starts a ``redis-server`` on a Unix
socket in the home, and it keeps running after that command exits, so the next commands and the
workers share it (tracker_reencrypt.embedded_redis). These show it and stop it; they never start
one, and never stop a server they did not start.
"""

from __future__ import annotations

import typer

from coordinator import render
from coordinator.commands.common import JsonOption, emit, say
from coordinator.context import Context, state_dir
from tracker_reencrypt import embedded_redis

embedded_app = typer.Typer(
    help="See and stop the embedded Redis of $REENCRYPT_HOME (the broker when REDIS_URL is unset).",
    no_args_is_help=True,
)


@embedded_app.command("status")
def embedded_status(c: typer.Context, as_json: bool = JsonOption) -> None:
    """Whether the home's embedded Redis runs: its socket, process id, uptime, memory and the
    clients connected. Exit 0 either way; it never starts one."""
    ctx: Context = c.obj
    found = embedded_redis.server(state_dir())
    payload = {**found.as_json(), "in_use_by_commands": not ctx.settings.redis_url}
    emit(ctx, as_json, payload, lambda: _show(found, bool(ctx.settings.redis_url)))


@embedded_app.command("stop")
def embedded_stop(
    c: typer.Context,
    force: bool = typer.Option(
        False, "--force", help="Stop it even while clients are connected (workers lose their broker)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Stop the home's embedded Redis (its queue is lost: 'sweep resume' re-queues a sweep from its
    checkpoints). Refused while other clients are connected, unless --force; nothing to do when
    none runs. The next command that needs a broker starts it again."""
    ctx: Context = c.obj
    found = embedded_redis.stop(state_dir(), force=force)  # refuses a server it did not start
    payload = {**found.as_json(), "running": False, "stopped": found.running}

    def human() -> None:
        if found.running:
            say(f"stopped the embedded Redis of {found.home} (pid {found.pid})")
        else:
            say(f"no embedded Redis runs in {found.home}: nothing to stop")

    emit(ctx, as_json, payload, human)


def _show(found: embedded_redis.Server, redis_url_set: bool) -> None:
    if not found.running:
        say(f"no embedded Redis runs in {found.home} (socket {found.socket})")
    else:
        memory = f"{(found.used_memory_bytes or 0) / 2**20:.1f} MiB"
        owner = "" if found.ours else " (not started by reencrypt: its pid file does not name it)"
        say(
            f"embedded Redis of {found.home}: running{owner}, pid {found.pid}, socket {found.socket}, "
            f"up {render.duration_hm(found.uptime_s or 0)}, memory {memory}, {found.clients} other clients connected"
        )
    if redis_url_set:
        say("REDIS_URL is set: commands use that broker, not this one")
