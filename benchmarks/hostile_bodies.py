"""Hostile answers over a real socket: a gzip bomb and a body that never ends.

A tiny HTTP server on 127.0.0.1 answers every request with either

* **bomb**: a 1 MB gzip body that inflates to 1 GiB (``Content-Encoding: gzip``), or
* **trickle**: a chunked body that sends one byte every 50 ms, forever;

and a :class:`BingXClient` pointed at it calls ``server_time()`` with ``total_timeout=2``.
Prints, per call, the exception it ended with, its elapsed time, the peak of memory
allocated while it ran as ``tracemalloc`` counts it (Python's allocations; the bomb itself
is built before measuring), and how much the process's peak resident size (``ru_maxrss``)
grew meanwhile. Targets: a tracemalloc peak under the body cap (8 MiB) + 16 MiB, and an end
within ``total_timeout`` + 1 s. Exits 1 if a target is missed.

    PYTHONPATH=. python benchmarks/hostile_bodies.py [--inflated-mib 1024] [--total-timeout 2]

(``PYTHONPATH=.`` from the repository's root, so that this checkout's library is measured.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import struct
import sys
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bingx_async import DEFAULT_RETRY, BingXClient, BingXError, RetryPolicy
from bingx_async._decode import MAX_BODY

MIB = 1024 * 1024
#: Each trickled chunk, and the pause between them.
TRICKLE_BYTE = b"1\r\n \r\n"
TRICKLE_PAUSE = 0.05


def gzip_bomb(inflated_mib: int) -> bytes:
    """A gzip member of ``inflated_mib`` MiB of zeros, about 1 KB per MiB: one compressed
    MiB, flushed so that it stands alone, repeated (identical input after a full flush
    compresses to identical bytes)."""
    zeros = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    final = compressor.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(inflated_mib):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    size = (inflated_mib * MIB) & 0xFFFFFFFF
    return header + block * inflated_mib + final + struct.pack("<II", crc, size)


@dataclass
class HostileServer:
    """Serves one kind of hostile answer to every request, on 127.0.0.1."""

    kind: str  # "bomb" or "trickle"
    bomb: bytes = b""
    url: str = ""
    requests: int = 0

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            async with server:
                yield self.url
        finally:
            server.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                self.requests += 1
                if self.kind == "bomb":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(self.bomb)
                    )
                    writer.write(self.bomb)
                    await writer.drain()
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n"
                    )
                    while True:
                        writer.write(TRICKLE_BYTE)
                        await writer.drain()
                        await asyncio.sleep(TRICKLE_PAUSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # the script is ending; a handler that raises it is reported as an error
        finally:
            writer.close()


@dataclass
class Outcome:
    kind: str
    error: BaseException | None
    elapsed: float
    peak: int
    rss_growth: int
    requests: int


async def hit(
    server: HostileServer, total_timeout: float, *, attempts: int = DEFAULT_RETRY.attempts
) -> Outcome:
    """One ``server_time()`` against ``server`` (with up to ``attempts`` requests): how it
    ended, how long it took, and the peak of memory allocated meanwhile (tracemalloc)."""
    async with server.serve() as url:
        policy = RetryPolicy(total_timeout=total_timeout, attempts=attempts)
        client = BingXClient(base_url=url, retry=policy)
        async with client:
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            tracemalloc.start()
            tracemalloc.reset_peak()
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                await client.server_time()
            except BingXError as caught:
                error = caught
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    return Outcome(server.kind, error, elapsed, peak, rss_growth * 1024, server.requests)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inflated-mib", type=int, default=1024)
    parser.add_argument("--total-timeout", type=float, default=2.0)
    options = parser.parse_args()
    bomb = gzip_bomb(options.inflated_mib)
    print(
        f"gzip bomb: {len(bomb) / 1e6:.2f} MB compressed, {options.inflated_mib} MiB inflated; "
        f"body cap {MAX_BODY / MIB:g} MiB; total_timeout {options.total_timeout:g} s"
    )
    print(
        "peak = tracemalloc's peak of Python allocations during the call (the target); "
        "rss = growth of the process's peak resident size (ru_maxrss) during it"
    )
    failed = False
    for server in (HostileServer("bomb", bomb), HostileServer("trickle")):
        outcome = asyncio.run(hit(server, options.total_timeout))
        peak_ok = outcome.peak < MAX_BODY + 16 * MIB
        time_ok = outcome.elapsed < options.total_timeout + 1.0
        failed |= not (peak_ok and time_ok and outcome.error is not None)
        ended = type(outcome.error).__name__ if outcome.error else "no error (!)"
        print(
            f"{outcome.kind:8s} ended with {ended} after {outcome.elapsed:.2f} s "
            f"({outcome.requests} request(s)); peak {outcome.peak / MIB:.1f} MiB, "
            f"rss +{outcome.rss_growth / MIB:.1f} MiB "
            f"[peak {'ok' if peak_ok else 'OVER'}, time {'ok' if time_ok else 'OVER'}]"
        )
        if outcome.error is not None:
            print(f"         {outcome.error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
