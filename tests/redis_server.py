"""A real ``redis-server`` for tests: on 127.0.0.1, on a free port, without persistence.

The server runs in the foreground as a child process, in a temporary directory of its own.
:meth:`RedisServer.stop` and :meth:`RedisServer.start` end and restart it on the same port, so
a test can cut Redis off for a moment and bring it back (with no data: nothing persists);
:meth:`RedisServer.restart` does both. :meth:`RedisServer.pause` and
:meth:`RedisServer.resume` (SIGSTOP, SIGCONT) make it a hung server, connections accepted
by the kernel and never answered.

It can also run as operators run it: with configuration of their own
(``config={"maxmemory": "2mb", "maxmemory-policy": "allkeys-lru"}``), as a read-only replica
of another server (``replica_of=``), or with ACL users (``users=[AclUser(...)]``,
connected to through :meth:`RedisServer.url_for`). The default user stays without a
password: it is the harness's own.

Readiness (``INFO server`` naming the process started, so that another server already on
the port is not mistaken for it) and the few commands the fixtures need (``PING``,
``FLUSHALL``, ``INFO``, ``AUTH``) go over a plain socket: this module needs nothing but the
``redis-server`` executable.

    with RedisServer() as server:
        ...  # connect to server.url
"""

from __future__ import annotations

import io
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self, TypeAlias
from urllib.parse import quote

__all__ = [
    "AclUser",
    "RedisServer",
    "Reply",
    "find_redis_server",
    "free_port",
    "ping",
    "send_command",
]

HOST = "127.0.0.1"
#: Seconds a server has to answer after it is started, and to exit after SIGTERM.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.01
_SOCKET_TIMEOUT = 2.0

#: The key a replica's start writes to its primary (and deletes) to see the link work.
_LINK_PROBE = "redis-server-harness:link"

#: One RESP2 reply: a status or bulk string, an integer, an array, or ``None`` (null bulk).
Reply: TypeAlias = "bytes | int | list[Reply] | None"


def find_redis_server() -> str | None:
    """The path of the ``redis-server`` executable, or ``None`` if it is not installed."""
    return shutil.which("redis-server")


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on now (the system's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _encode(args: tuple[str, ...]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(stream: io.BufferedReader) -> Reply:
    """One RESP2 reply (see :data:`Reply`). An error reply raises :class:`RuntimeError`."""
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis-server closed the connection mid-reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body
    if kind == b"-":
        raise RuntimeError(f"redis-server answered an error: {body.decode(errors='replace')}")
    if kind == b":":
        return int(body)
    if kind == b"$":
        length = int(body)
        if length < 0:
            return None
        data = b""
        while len(data) < length + 2:
            chunk = stream.read(length + 2 - len(data))
            if not chunk:
                raise ConnectionError("redis-server closed the connection mid-reply")
            data += chunk
        return data[:length]
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise RuntimeError(f"unexpected reply from redis-server: {line!r}")


def send_command(
    port: int,
    *args: str,
    host: str = HOST,
    auth: tuple[str, str] | None = None,
    timeout: float = _SOCKET_TIMEOUT,
) -> Reply:
    """Send one command over a new connection and return its reply (see :data:`Reply`),
    first authenticating as ``auth`` (user name, password) if given.

    Raises :class:`ConnectionRefusedError` when nothing listens on the port, ``TimeoutError``
    when the server does not answer within ``timeout`` seconds, and :class:`RuntimeError`
    for an error reply (which names the command refused, never the password).
    """
    with socket.create_connection((host, port), timeout=timeout) as connection:
        if auth is not None:
            connection.sendall(_encode(("AUTH", *auth)))
        connection.sendall(_encode(args))
        with connection.makefile("rb") as stream:
            if auth is not None:
                _read_reply(stream)
            return _read_reply(stream)


def ping(port: int, host: str = HOST, *, timeout: float = _SOCKET_TIMEOUT) -> bool:
    """True when a server on the port answers PING with PONG within ``timeout`` seconds."""
    try:
        return send_command(port, "PING", host=host, timeout=timeout) == b"PONG"
    except (OSError, RuntimeError):
        return False


def _redis_version(executable: str) -> tuple[int, ...]:
    """``redis-server``'s version, e.g. ``(7, 0, 15)`` (``(0,)`` if it does not say)."""
    out = subprocess.run(  # noqa: S603 - the executable found, one fixed option
        [executable, "--version"], capture_output=True, text=True, check=False
    ).stdout
    found = re.search(r"v=(\d+(?:\.\d+)*)", out)
    return tuple(int(part) for part in found.group(1).split(".")) if found else (0,)


def _config_line(name: str, values: Sequence[str]) -> str:
    """One line of a redis.conf, every argument quoted (spaces, quotes and all)."""
    quoted = ('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values)
    return " ".join([name, *quoted])


@dataclass(frozen=True)
class AclUser:
    """A Redis ACL user, on every key and channel, with ``rules`` on commands: e.g.
    ``AclUser("no-scripts", password, ("+@all", "-evalsha", "-eval"))``.

    The password is never part of its repr (nor of a test id made from one).
    """

    name: str
    password: str = field(repr=False)
    rules: tuple[str, ...] = ("+@all",)

    def acl(self, *, channels: bool = True) -> list[str]:
        """The arguments of its ``user`` configuration line (``channels``: the server knows
        channel rules, Redis 6.2 and later)."""
        patterns = ["~*", "&*"] if channels else ["~*"]
        return [self.name, "on", f">{self.password}", *patterns, *self.rules]


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port`` (a free port unless given).

    :meth:`start` returns once the server answers (and, for a replica, once its link to its
    primary is up); :meth:`stop` sends SIGTERM and waits for the process to exit; :meth:`close`
    also removes the temporary directory. As a context manager it starts on entry and closes
    on exit.

    * ``config``: more configuration, name to value (or to several arguments), e.g.
      ``{"maxmemory": "2mb", "maxmemory-policy": "allkeys-lru"}``;
    * ``replica_of``: a running server this one replicates, read-only;
    * ``users``: ACL users besides the default one (which keeps no password).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        executable: str | None = None,
        config: Mapping[str, str | Sequence[str]] | None = None,
        replica_of: RedisServer | None = None,
        users: Sequence[AclUser] = (),
    ) -> None:
        found = executable or find_redis_server()
        if found is None:
            raise FileNotFoundError("redis-server not installed; apt-get install redis-server")
        self.executable = found
        self.host = HOST
        self.port = port if port is not None else free_port()
        self.config: dict[str, tuple[str, ...]] = {
            name: (value,) if isinstance(value, str) else tuple(value)
            for name, value in (config or {}).items()
        }
        self.replica_of = replica_of
        self.users: tuple[AclUser, ...] = tuple(users)
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, as the default user."""
        return f"redis://{self.host}:{self.port}/0"

    def url_for(self, user: AclUser) -> str:
        """``redis://USER:PASSWORD@127.0.0.1:PORT/0``: a URL with a secret, not for printing."""
        if user not in self.users:
            raise ValueError(f"{user!r} is not a user of {self!r}")
        name, password = quote(user.name, safe=""), quote(user.password, safe="")
        return f"redis://{name}:{password}@{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def paused(self) -> bool:
        """Whether the process is stopped by :meth:`pause` (it still runs, answering nothing)."""
        return self._paused and self.running

    @property
    def log(self) -> str:
        """What the server wrote so far (empty before the first start): to its console
        (where a configuration it refuses is reported), then to its log file."""
        if self._dir is None:
            return ""
        files = (self._dir / "console.log", self._dir / "redis.log")
        return "".join(file.read_text(errors="replace") for file in files if file.exists())

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers."""
        if self.running:
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        # A configuration file (not arguments) for what operators configure: ACL passwords
        # stay out of the process list, and a value may hold spaces.
        config_file = self._dir / "redis.conf"
        config_file.write_text(self._config_text())
        command = [
            self.executable,
            str(config_file),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            # A replica's first sync starts at once, not after the default 5 s wait for others.
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            str(self._dir),
            "--logfile",
            str(self._dir / "redis.log"),
        ]
        with (self._dir / "console.log").open("ab") as console:
            self._process = subprocess.Popen(  # noqa: S603 - a fixed command line
                command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answering(self._process.pid):
            if self._process.poll() is not None or time.monotonic() > deadline:
                exited = self._process.poll() is not None
                self.stop()
                why = "exited" if exited else f"did not answer within {START_TIMEOUT:g} s"
                raise RuntimeError(f"redis-server on port {self.port} {why}:\n{self.log}")
            time.sleep(_POLL_INTERVAL)
        self._paused = False
        if self.replica_of is not None:
            self._wait_for_link()

    def _config_text(self) -> str:
        lines = [_config_line(name, values) for name, values in self.config.items()]
        if self.users:
            channels = _redis_version(self.executable) >= (6, 2)
            lines += [_config_line("user", user.acl(channels=channels)) for user in self.users]
        if self.replica_of is not None:
            lines.append(_config_line("replicaof", [HOST, str(self.replica_of.port)]))
        return "".join(line + "\n" for line in lines)

    def _wait_for_link(self) -> None:
        """Wait until a write to the primary reaches this replica. (Its link is "up" once it
        has loaded its first sync, but the primary may stream writes to it only a second
        later: a key is written, seen here, and deleted again.)"""
        primary = self.replica_of
        assert primary is not None
        deadline = time.monotonic() + START_TIMEOUT
        for value in (b"1", None):
            while True:
                try:
                    if value is not None:
                        send_command(primary.port, "SET", _LINK_PROBE, "1", "PX", "60000")
                    else:
                        send_command(primary.port, "DEL", _LINK_PROBE)
                    if send_command(self.port, "GET", _LINK_PROBE) == value:
                        break
                except (OSError, RuntimeError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server on port {self.port}: no link to its primary on port "
                        f"{primary.port} within {START_TIMEOUT:g} s:\n{self.log}"
                    )
                time.sleep(_POLL_INTERVAL)

    def _answering(self, pid: int) -> bool:
        """True once the server on the port answers, and is this process (not another
        server that already had the port)."""
        try:
            info = send_command(self.port, "INFO", "server", host=self.host)
        except (OSError, RuntimeError):
            return False
        return isinstance(info, bytes) and f"process_id:{pid}\r\n".encode() in info

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it does not exit) and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            if self._paused:
                process.send_signal(signal.SIGCONT)  # a stopped process would not see SIGTERM
            self._paused = False
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        """Stop the server and start it again on the same port: empty, as if it had crashed
        and come back without persistence."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Stop the process (SIGSTOP): connections are still accepted, nothing is answered,
        as with a hung server. :meth:`resume` lets it go on where it was."""
        process = self._require_running()
        process.send_signal(signal.SIGSTOP)
        self._paused = True
        self._wait_for_state(process.pid, stopped=True)

    def resume(self) -> None:
        """Let a paused process go on (SIGCONT), its data as it was."""
        process = self._require_running()
        process.send_signal(signal.SIGCONT)
        self._paused = False
        self._wait_for_state(process.pid, stopped=False)

    def _require_running(self) -> subprocess.Popen[bytes]:
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} is not running")
        return process

    @staticmethod
    def _wait_for_state(pid: int, *, stopped: bool) -> None:
        """Wait until the kernel reports the process stopped (or not): a signal is delivered
        asynchronously. Without /proc (not Linux), return at once."""
        stat = Path(f"/proc/{pid}/stat")
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                # The state follows the command name, which is in parentheses.
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return
            if (state in ("T", "t")) == stopped:
                return
            time.sleep(_POLL_INTERVAL / 10)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def flushall(self) -> None:
        """Delete every key of every database."""
        send_command(self.port, "FLUSHALL", host=self.host)

    def info(self, section: str) -> dict[str, str]:
        """``INFO section`` as a mapping of its fields (``"role"`` to ``"master"``, ...)."""
        info = send_command(self.port, "INFO", section, host=self.host)
        assert isinstance(info, bytes)
        fields = (line.partition(":") for line in info.decode().splitlines())
        return {name: value for name, sep, value in fields if sep and not name.startswith("#")}

    def command_count(self) -> int:
        """Commands the server has run since it started, not counting INFO itself."""
        info = send_command(self.port, "INFO", "commandstats", host=self.host)
        assert isinstance(info, bytes)
        total = 0
        for line in info.decode().splitlines():
            name, _, stats = line.partition(":")
            if name.startswith("cmdstat_") and name != "cmdstat_info":
                fields = dict(field.split("=", 1) for field in stats.split(","))
                total += int(fields["calls"])
        return total

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"RedisServer({self.url!r}, {state})"
