"""The decode stage against hostile and random bodies: the slowest decode, in CPU time.

Every answer, however broken, must become data or a BingXError within a few milliseconds, so
that no body can stall the event loop. Prints the slowest body of each kind and its time.

    python benchmarks/decode_worst.py --random 20000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import time

import httpx

from bingx_async import BingXError
from bingx_async._decode import decode

HOSTILE = {
    "huge exponent code": b'{"code":1e1000000}',
    "huger exponent code": b'{"code":1e100000000,"msg":"x"}',
    "superscript code": b'{"code":"\xc2\xb2"}',
    "5000-digit code": b'{"code":' + b"9" * 5000 + b"}",
    "huge exponent leverage": b'{"code":0,"data":[{"positionId":"1","leverage":1e400000}]}',
    "NaN ids": b'{"code":0,"data":{"positionId":NaN,"orderId":Infinity}}',
    "serverTime 1e20": b'{"code":0,"data":{"serverTime":100000000000000000000}}',
    "5 MB msg": json.dumps({"code": 100400, "msg": "x" * 5_000_000}).encode(),
    "5 MB rate-limit msg": json.dumps({"code": 100410, "msg": "after " * 800_000}).encode(),
    "100,000-deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "9 MB body": b'{"code":0,"data":"' + b"x" * 9_000_000 + b'"}',
    "HTML page": b"<html><title>502</title>" + b"<p>x</p>" * 100_000 + b"</html>",
}


def cpu_ms(body: bytes, status: int = 200) -> float:
    response = httpx.Response(status, content=body, headers={"location": "https://x.example/"})
    started = time.process_time()
    with contextlib.suppress(BingXError):
        decode("POST /openApi/swap/v1/trade/closePosition", response, server_now=1.7e9)
    return (time.process_time() - started) * 1000


def random_body(rng: random.Random) -> bytes:
    pieces = [b"{", b"}", b"[", b"]", b'"code"', b":", b",", b"0", b"1e99999", b'"msg"', b'"x"']
    pieces += [b"NaN", b"-", b"9" * 80, b"\xff", b"null", b"true"]
    return b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 60)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=20_000, help="random bodies to try")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for name, body in HOSTILE.items():
        print(f"{name:<24} {len(body):>10} bytes  {cpu_ms(body):8.2f} ms")
    rng = random.Random(args.seed)
    times = sorted(
        cpu_ms(random_body(rng), rng.choice([200, 400, 429, 504])) for _ in range(args.random)
    )
    print(
        f"{args.random} random bodies: median {times[len(times) // 2]:.3f} ms, "
        f"99.9th percentile {times[int(len(times) * 0.999)]:.3f} ms, slowest {times[-1]:.3f} ms"
    )


if __name__ == "__main__":
    main()
