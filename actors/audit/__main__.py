"""``python -m actors.audit``: the audit-logger on its own, as ``ragbus actor`` would run it.

Until the lead registers it in ``actors.ACTORS`` this is how a separate process
(and the crash test, which kills one) runs the audit-logger.
"""

from __future__ import annotations

import sys

import anyio

from config import ConfigError, load_settings
from runtime import configure_logging
from runtime._run import run_actors
from runtime.security import role_for_actor, secret_values
from runtime.state import read_run_info

from ._actor import AuditLogger


def main() -> int:
    try:
        loaded = load_settings(roles={role_for_actor(AuditLogger.name)})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = loaded.settings
    configure_logging(settings.logging, secrets=secret_values(settings))
    url = settings.nats.url
    if url is None:
        info = read_run_info(settings)
        if info is None:
            print("error: no NATS to talk to: set nats.url (RAGBUS_NATS__URL) or start "
                  "`ragbus up` first", file=sys.stderr)
            return 2
        url = info.nats_url
    anyio.run(lambda: run_actors(settings, {AuditLogger.name: AuditLogger}, embedded=False,
                                 nats_url=url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
