"""A real ``redis-server`` for tests: on 127.0.0.1, on a free port, without persistence.

The server runs in the foreground as a child process, in a temporary directory of its own.
:meth:`RedisServer.stop` and :meth:`RedisServer.start` end and restart it on the same port, so
a test can cut Redis off for a moment and bring it back (with no data: nothing persists).

Readiness (``INFO server`` naming the process started, so that another server already on
the port is not mistaken for it) and the few commands the fixtures need (``PING``,
``FLUSHALL``, ``INFO``) go over a plain socket: this module needs nothing but the
``redis-server`` executable.

    with RedisServer() as server:
        ...  # connect to server.url
"""

from __future__ import annotations

import io
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["RedisServer", "find_redis_server", "free_port", "ping", "send_command"]

HOST = "127.0.0.1"
#: Seconds a server has to answer after it is started, and to exit after SIGTERM.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.01
_SOCKET_TIMEOUT = 2.0


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


def _read_reply(stream: io.BufferedReader) -> bytes | int | None:
    """One RESP2 reply: a status or bulk string, an integer, or ``None`` for a null bulk.

    An error reply raises :class:`RuntimeError`; arrays are not needed here.
    """
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
    raise RuntimeError(f"unexpected reply from redis-server: {line!r}")


def send_command(port: int, *args: str, host: str = HOST) -> bytes | int | None:
    """Send one command over a new connection and return its reply (see ``_read_reply``).

    Raises :class:`ConnectionRefusedError` when nothing listens on the port.
    """
    with socket.create_connection((host, port), timeout=_SOCKET_TIMEOUT) as connection:
        connection.sendall(_encode(args))
        with connection.makefile("rb") as stream:
            return _read_reply(stream)


def ping(port: int, host: str = HOST) -> bool:
    """True when a server on the port answers PING with PONG."""
    try:
        return send_command(port, "PING", host=host) == b"PONG"
    except (OSError, RuntimeError):
        return False


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port`` (a free port unless given).

    :meth:`start` returns once the server answers; :meth:`stop` sends SIGTERM and waits
    for the process to exit; :meth:`close` also removes the temporary directory. As a context
    manager it starts on entry and closes on exit.
    """

    def __init__(self, *, port: int | None = None, executable: str | None = None) -> None:
        found = executable or find_redis_server()
        if found is None:
            raise FileNotFoundError("redis-server not installed; apt-get install redis-server")
        self.executable = found
        self.host = HOST
        self.port = port if port is not None else free_port()
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log(self) -> str:
        """What the server wrote to its log so far (empty before the first start)."""
        if self._dir is None or not (self._dir / "redis.log").exists():
            return ""
        return (self._dir / "redis.log").read_text(errors="replace")

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers."""
        if self.running:
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        command = [
            self.executable,
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
            "--dir",
            str(self._dir),
            "--logfile",
            str(self._dir / "redis.log"),
        ]
        self._process = subprocess.Popen(  # noqa: S603 - a fixed command line
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answering(self._process.pid):
            if self._process.poll() is not None or time.monotonic() > deadline:
                exited = self._process.poll() is not None
                self.stop()
                why = "exited" if exited else f"did not answer within {START_TIMEOUT:g} s"
                raise RuntimeError(f"redis-server on port {self.port} {why}:\n{self.log}")
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
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def flushall(self) -> None:
        """Delete every key of every database."""
        send_command(self.port, "FLUSHALL", host=self.host)

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
        state = "running" if self.running else "stopped"
        return f"RedisServer({self.url!r}, {state})"
