"""The Redis fixtures themselves: a real server that answers, stops, and comes back empty."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from .redis_server import HOST, RedisServer, ping, send_command


def _port(url: str) -> int:
    parts = urlsplit(url)
    assert parts.scheme == "redis"
    assert parts.hostname == HOST
    assert parts.path == "/0"
    assert parts.port is not None
    return parts.port


def _ping_raw(port: int) -> bytes:
    """PING in RESP, over a plain socket, without any helper."""
    with socket.create_connection((HOST, port), timeout=2.0) as connection:
        connection.sendall(b"*1\r\n$4\r\nPING\r\n")
        return connection.recv(64)


def test_the_shared_server_answers_ping_over_a_raw_socket(redis_url: str) -> None:
    assert _ping_raw(_port(redis_url)) == b"+PONG\r\n"


@pytest.mark.parametrize("run", [1, 2])
def test_the_shared_server_starts_each_test_empty(redis_url: str, run: int) -> None:
    port = _port(redis_url)
    assert send_command(port, "DBSIZE") == 0  # the first run's key is gone in the second
    assert send_command(port, "SET", "left-behind", str(run)) == b"OK"


def test_stop_refuses_connections_and_start_brings_it_back_empty(
    redis_server: RedisServer,
) -> None:
    port = _port(redis_server.url)
    assert send_command(port, "SET", "key", "value") == b"OK"

    redis_server.stop()
    assert not redis_server.running
    assert not ping(port)
    with pytest.raises(ConnectionRefusedError):
        _ping_raw(port)

    redis_server.start()
    assert redis_server.running
    assert redis_server.url == f"redis://{HOST}:{port}/0"
    assert _ping_raw(port) == b"+PONG\r\n"
    assert send_command(port, "GET", "key") is None  # nothing persisted


def test_each_test_gets_its_own_server(redis_server: RedisServer, redis_url: str) -> None:
    assert _port(redis_server.url) != _port(redis_url)


def test_counts_commands_and_flushes(redis_server: RedisServer) -> None:
    before = redis_server.command_count()
    send_command(redis_server.port, "SET", "a", "1")
    send_command(redis_server.port, "INCR", "b")
    assert redis_server.command_count() == before + 2
    redis_server.flushall()
    assert send_command(redis_server.port, "DBSIZE") == 0


def test_as_a_context_manager_it_starts_then_stops_and_cleans_up(
    redis_server: RedisServer,  # only to skip (or fail in CI) without redis-server
) -> None:
    with RedisServer() as server:
        assert ping(server.port)
        assert "Ready to accept connections" in server.log
    assert not server.running
    assert not ping(server.port)
    assert server.log == ""  # its directory is gone


def test_a_server_that_cannot_start_says_why(redis_server: RedisServer) -> None:
    taken = RedisServer(port=redis_server.port)  # the port is in use
    try:
        with pytest.raises(RuntimeError, match=f"port {redis_server.port} exited"):
            taken.start()
        assert not taken.running
    finally:
        taken.close()
    assert redis_server.running
