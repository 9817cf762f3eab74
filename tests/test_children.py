"""`stream.children.free_port`: ports for servers that bind them a moment later (the
embedded broker and Valkey, the demo's and the tests' workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream import children


def test_free_ports_stay_below_the_range_outgoing_connections_take(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Between handing out a port and a server binding it, any process's outgoing
    connection may take an ephemeral port (a worker's web server once lost its port so,
    "address already in use"). The ports handed out lie below the kernel's ephemeral range
    and can be bound; where the range cannot be read, the OS picks one."""
    span = tmp_path / "ip_local_port_range"
    span.write_text("40000\t60999\n")
    monkeypatch.setattr(children, "EPHEMERAL_RANGE", span)
    ports = [children.free_port() for _ in range(50)]
    assert all(children.LOWEST_PORT <= p < 40_000 for p in ports)
    assert all(children.port_free(p) for p in ports)
    monkeypatch.setattr(children, "EPHEMERAL_RANGE", tmp_path / "missing")
    assert children.port_free(children.free_port())
