"""The Redis fixtures themselves: a real server that answers, stops, and comes back empty;
that runs with an operator's configuration, as a replica or with ACL users; and that can
hang."""

from __future__ import annotations

import socket
import time
from urllib.parse import unquote, urlsplit

import pytest

from . import redis_server as harness
from .conftest import MakeRedisServer
from .redis_server import HOST, AclUser, RedisServer, ping, send_command


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


# --- as operators run it ----------------------------------------------------------------


def test_extra_configuration_is_in_force(make_redis_server: MakeRedisServer) -> None:
    server = make_redis_server(
        config={"maxmemory": "2mb", "maxmemory-policy": "allkeys-lru", "notify-keyspace-events": ""}
    )
    assert send_command(server.port, "CONFIG", "GET", "maxmemory-policy") == [
        b"maxmemory-policy",
        b"allkeys-lru",
    ]
    assert server.info("memory")["maxmemory"] == str(2 * 1024 * 1024)


def test_a_configuration_value_may_be_several_arguments(
    make_redis_server: MakeRedisServer,
) -> None:
    server = make_redis_server(
        config={"client-output-buffer-limit": ["pubsub", "1mb", "512kb", "30"]}
    )
    found = send_command(server.port, "CONFIG", "GET", "client-output-buffer-limit")
    assert isinstance(found, list)
    assert isinstance(found[1], bytes)
    assert b"pubsub 1048576 524288 30" in found[1]


def test_a_bad_configuration_says_why(make_redis_server: MakeRedisServer) -> None:
    with pytest.raises(RuntimeError, match="maxmemory-policy"):
        make_redis_server(config={"maxmemory-policy": "never-heard-of"})


def test_a_replica_is_read_only_and_follows_its_primary(
    make_redis_server: MakeRedisServer,
) -> None:
    primary = make_redis_server()
    replica = make_redis_server(replica_of=primary)

    assert replica.info("replication")["role"] == "slave"
    assert replica.info("replication")["master_link_status"] == "up"
    assert replica.info("replication")["master_port"] == str(primary.port)
    assert send_command(primary.port, "SET", "key", "value") == b"OK"
    assert send_command(primary.port, "WAIT", "1", "2000") == 1  # the replica has it
    assert send_command(replica.port, "GET", "key") == b"value"
    with pytest.raises(RuntimeError, match="READONLY"):
        send_command(replica.port, "SET", "key", "other")


def test_a_replica_of_a_server_that_is_not_there_does_not_start(
    make_redis_server: MakeRedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary = make_redis_server()
    primary.stop()
    monkeypatch.setattr(harness, "START_TIMEOUT", 0.5)
    with pytest.raises(RuntimeError, match=f"no link to its primary on port {primary.port}"):
        make_redis_server(replica_of=primary)


USERS = [
    AclUser("no-scripts", "pw-scripts-7f3a", ("+@all", "-evalsha", "-eval")),
    AclUser("no-publish", "pw-publish-19c2", ("+@all", "-publish")),
    AclUser("no-config", "pw-config-c41d", ("+@all", "-config", "-info")),
]
#: Per user: the commands it may not run.
REFUSED = {
    "no-scripts": (("EVALSHA", "0" * 40, "0"), ("EVAL", "return 1", "0")),
    "no-publish": (("PUBLISH", "channel", "message"),),
    "no-config": (("CONFIG", "GET", "maxmemory-policy"), ("INFO", "memory")),
}


@pytest.mark.parametrize("user", USERS, ids=[user.name for user in USERS])
def test_an_acl_user_is_refused_what_its_rules_deny(
    make_redis_server: MakeRedisServer, user: AclUser
) -> None:
    server = make_redis_server(users=USERS)
    credentials = (user.name, user.password)

    assert send_command(server.port, "SET", "key", "value", auth=credentials) == b"OK"
    assert send_command(server.port, "ZADD", "zset", "1", "a", auth=credentials) == 1
    for command in REFUSED[user.name]:
        with pytest.raises(RuntimeError, match="NOPERM") as caught:
            send_command(server.port, *command, auth=credentials)
        assert command[0].lower() in str(caught.value).lower()
        assert user.password not in str(caught.value)
    with pytest.raises(RuntimeError, match="WRONGPASS"):
        send_command(server.port, "PING", auth=(user.name, "not-the-password"))
    assert ping(server.port)  # the default user is the harness's, without a password


def test_the_url_of_a_user_carries_the_password_and_nothing_else_shows_it(
    make_redis_server: MakeRedisServer,
) -> None:
    user = AclUser("bot", "p@ss:w/rd 1", ("+@all",))
    server = make_redis_server(users=[user])

    parts = urlsplit(server.url_for(user))
    assert (parts.hostname, parts.port, parts.path) == (HOST, server.port, "/0")
    assert parts.username is not None
    assert parts.password is not None
    assert (unquote(parts.username), unquote(parts.password)) == (user.name, user.password)
    assert send_command(server.port, "PING", auth=(user.name, user.password)) == b"PONG"
    assert user.password not in repr(user)
    assert user.password not in repr(server)
    assert user.password not in server.url
    with pytest.raises(ValueError, match="not a user"):
        server.url_for(AclUser("stranger", "secret-stranger"))


def test_restart_comes_back_on_the_same_port_empty_as_a_new_process(
    redis_server: RedisServer,
) -> None:
    assert send_command(redis_server.port, "SET", "key", "value") == b"OK"
    pid = redis_server.info("server")["process_id"]

    redis_server.restart()

    assert redis_server.running
    assert redis_server.info("server")["process_id"] != pid
    assert redis_server.info("server")["tcp_port"] == str(redis_server.port)
    assert send_command(redis_server.port, "DBSIZE") == 0


def test_a_paused_server_answers_nothing_until_resumed(redis_server: RedisServer) -> None:
    assert send_command(redis_server.port, "SET", "key", "value") == b"OK"

    redis_server.pause()
    assert redis_server.paused
    assert "paused" in repr(redis_server)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        send_command(redis_server.port, "PING", timeout=0.3)  # connected, never answered
    assert time.monotonic() - started < 1.0
    assert not ping(redis_server.port, timeout=0.3)

    redis_server.resume()
    assert not redis_server.paused
    assert ping(redis_server.port)
    assert send_command(redis_server.port, "GET", "key") == b"value"  # where it was


def test_a_paused_server_stops_at_once(redis_server: RedisServer) -> None:
    redis_server.pause()
    started = time.monotonic()
    redis_server.stop()
    assert time.monotonic() - started < 2.0  # SIGTERM is seen, not waited out until SIGKILL
    assert not redis_server.running
    assert not redis_server.paused
    with pytest.raises(RuntimeError, match="not running"):
        redis_server.pause()
