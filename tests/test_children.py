"""`stream.children.free_port`: ports for servers that bind them a moment later (the
embedded broker and Valkey, the demo's and the tests' workers)."""

from __future__ import annotations

import os
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
    monkeypatch.setattr(children, "RESERVED", tmp_path / "reserved")
    ports = [children.free_port() for _ in range(50)]
    assert all(children.LOWEST_PORT <= p < 40_000 for p in ports)
    assert all(children.port_free(p) for p in ports)
    monkeypatch.setattr(children, "EPHEMERAL_RANGE", tmp_path / "missing")
    assert children.port_free(children.free_port())


class _Scripted:
    """A stand-in for `free_port`'s generator that draws the given ports in turn."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports

    def randrange(self, low: int, high: int) -> int:
        return self.ports.pop(0)


def test_a_port_handed_out_is_not_handed_out_again_until_its_claim_is_stale(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two processes picking at once (the two test workers, or a test and the demo) drew
    the same port and the second server to bind it failed: a port handed out is claimed
    (a file under `RESERVED`) and not handed out again, even when drawn again, until the
    claim is older than `RESERVED_SECONDS`."""
    span = tmp_path / "ip_local_port_range"
    span.write_text("40000 60999")
    monkeypatch.setattr(children, "EPHEMERAL_RANGE", span)
    monkeypatch.setattr(children, "RESERVED", tmp_path / "reserved")
    free = [p for p in range(27_000, 28_000) if children.port_free(p)][:2]
    monkeypatch.setattr(children, "_pick", _Scripted([free[0], free[0], free[1]]))
    assert children.free_port() == free[0]
    assert children.free_port() == free[1]  # free[0] drawn again, but claimed
    claim = tmp_path / "reserved" / str(free[0])
    old = claim.stat().st_mtime - children.RESERVED_SECONDS - 1
    os.utime(claim, (old, old))
    monkeypatch.setattr(children, "_pick", _Scripted([free[0]]))
    assert children.free_port() == free[0]  # a stale claim is taken over
