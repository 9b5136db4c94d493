"""The README's third-party consumer on a secured bus: logged in as the auditor role."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

from ragbus.config import Settings
from ragbus.runtime.audit import ensure_audit_stream
from ragbus.subjects import MSG_ID_HEADER, AuditEvent, Subjects
from tests.actors.audit.example_consumer import export_audit
from tests.security._roles import SECURITY, login

S = Subjects()


async def test_on_a_secured_bus_the_auditor_role_reads_the_stream(secure_url: str) -> None:
    audit_role, embedder = await login(secure_url, "audit"), await login(secure_url, "embedder")
    try:
        await ensure_audit_stream(audit_role.nc, Settings())
        for i in range(5):
            event = AuditEvent(kind="config.loaded", actor="embedder", request_id=str(i))
            await embedder.nc.jetstream().publish(S.audit("embedder", event.kind),
                                                  msgspec.json.encode(event),
                                                  headers={MSG_ID_HEADER: event.event_id})
    finally:
        await audit_role.nc.close()
        await embedder.nc.close()
    assert SECURITY.auditor_password is not None
    received: list[dict[str, Any]] = []
    with anyio.fail_after(20):
        count = await export_audit(secure_url, received.append, user="auditor",
                                   password=SECURITY.auditor_password.get(), stop_after=5)
    assert count == 5
    assert [e["request_id"] for e in received] == ["0", "1", "2", "3", "4"]
