"""Signing: BingX's golden vector, canonical pairs, and the exact query that goes on the wire."""

from __future__ import annotations

import hashlib
import hmac
from decimal import Decimal
from urllib.parse import unquote

import httpx
import pytest
import respx

from bingx_async import BingXClient
from bingx_async._signing import canonical_pairs, encode_query, raw_query, sign

from .conftest import SECRET_KEY

GOLDEN_SECRET = (
    "mheO6dR8ovSsxZQCOYEFCtelpuxcWGTfHw7te326y6jOwq5WpvFQ9JNljoTwBXZGv5It07m9RXSPpDQEK2w"
)
GOLDEN_STRING = "symbol=BTC-USDT&timestamp=1667872120843&side=LONG&leverage=6"
GOLDEN_HEX = "4f581ecdb1fa09b9d6e57886b6f70cffed17f82b93399722939e49a38edec2bf"

#: Values that need percent-encoding on the wire but are signed raw.
AWKWARD_VALUES = {
    "non_ascii": "Ünïcødé-币安-😀",
    "hash": "a#b",
    "ampersand": "a&b=c",
    "plus": "1+1",
    "space": "a b  c",
    "equals": "k=v==",
    "percent": "100%25%",
    "mixed": "x y+z&w=#%é",
}


def _hmac(payload: str) -> str:
    return hmac.new(SECRET_KEY.encode(), payload.encode(), hashlib.sha256).hexdigest()


def _wire_pairs(request: httpx.Request) -> list[tuple[str, str]]:
    """The query as sent, split on raw '&' and '=' and percent-decoded pair by pair."""
    query = request.url.query.decode("ascii")
    pairs = []
    for part in query.split("&"):
        key, _, value = part.partition("=")
        pairs.append((unquote(key, errors="strict"), unquote(value, errors="strict")))
    return pairs


async def _send(
    client: BingXClient, router: respx.Router, params: dict[str, object]
) -> httpx.Request:
    route = router.post("/openApi/x").respond(json={"code": 0, "msg": "", "data": None})
    await client.request("POST", "/openApi/x", params)  # type: ignore[arg-type]
    request: httpx.Request = route.calls.last.request
    return request


def test_golden_vector() -> None:
    """BingX's documented example signs to its documented hex digest."""
    assert sign(GOLDEN_SECRET, GOLDEN_STRING) == GOLDEN_HEX


def test_signature_is_lowercase_hex_sha256() -> None:
    """A signature is 64 lower-case hex characters."""
    signature = sign("secret", "a=1")
    assert len(signature) == 64
    assert signature == signature.lower()
    int(signature, 16)


def test_canonical_pairs_are_sorted_by_key() -> None:
    """Pairs come out sorted by key, whatever the input order."""
    pairs = canonical_pairs({"symbol": "BTC-USDT", "timestamp": 1, "side": "LONG", "leverage": 6})
    assert [key for key, _ in pairs] == ["leverage", "side", "symbol", "timestamp"]


def test_canonical_pairs_drop_none() -> None:
    """Parameters whose value is None are left out entirely."""
    assert canonical_pairs({"a": None, "b": "x", "c": None}) == [("b", "x")]


def test_canonical_pairs_keep_falsy_values() -> None:
    """0, False and the empty string are real values, not dropped like None."""
    assert canonical_pairs({"a": 0, "b": False, "c": ""}) == [("a", "0"), ("b", "false"), ("c", "")]


def test_canonical_pairs_format_bools_lowercase() -> None:
    """Booleans travel as true/false."""
    assert canonical_pairs({"a": True, "b": False}) == [("a", "true"), ("b", "false")]


def test_canonical_pairs_format_lists_as_compact_json() -> None:
    """Lists become compact JSON without spaces."""
    assert canonical_pairs({"ids": [1, "2", True, None]}) == [("ids", '[1,"2",true,null]')]


def test_canonical_pairs_format_dicts_as_compact_json() -> None:
    """Objects become compact JSON, non-ASCII kept as is."""
    assert canonical_pairs({"o": {"k": "é", "n": [1, 2]}}) == [("o", '{"k":"é","n":[1,2]}')]


def test_canonical_pairs_format_numbers_exactly() -> None:
    """Ints, floats and Decimals keep every digit, without exponent notation."""
    pairs = canonical_pairs(
        {
            "a": 1770656007907930112,
            "b": 0.1,
            "c": Decimal("0.00000001"),
            "d": Decimal("1.50"),
            "e": 1e-7,
        }
    )
    assert pairs == [
        ("a", "1770656007907930112"),
        ("b", "0.1"),
        ("c", "0.00000001"),
        ("d", "1.50"),
        ("e", "0.0000001"),
    ]


def test_raw_query_joins_pairs_without_encoding() -> None:
    """The string to sign keeps the given order and raw values."""
    assert raw_query([("b", "x y"), ("a", "&=")]) == "b=x y&a=&="


def test_encode_query_decodes_back_to_raw_values() -> None:
    """Every awkward value survives encoding pair by pair."""
    pairs = sorted(AWKWARD_VALUES.items())
    encoded = encode_query(pairs)
    decoded = [tuple(unquote(p) for p in part.split("=")) for part in encoded.split("&")]
    assert decoded == pairs


async def test_wire_query_carries_params_in_signed_order(
    client: BingXClient, router: respx.Router
) -> None:
    """Keys go on the wire sorted, recvWindow and timestamp included, signature last."""
    request = await _send(client, router, {"zeta": "1", "alpha": "2", "mid": "3"})
    keys = [key for key, _ in _wire_pairs(request)]
    assert keys == ["alpha", "mid", "recvWindow", "timestamp", "zeta", "signature"]


@pytest.mark.parametrize("name", sorted(AWKWARD_VALUES))
async def test_wire_query_decodes_to_the_signed_string(
    client: BingXClient, router: respx.Router, name: str
) -> None:
    """The query sent, decoded pair by pair ('+' not a space), is exactly the signed string."""
    value = AWKWARD_VALUES[name]
    request = await _send(client, router, {"value": value, "symbol": "BTC-USDT"})
    pairs = _wire_pairs(request)
    assert pairs[-1][0] == "signature"
    signed = pairs[:-1]
    assert ("value", value) in signed
    assert pairs[-1][1] == _hmac(raw_query(signed))


@pytest.mark.parametrize("name", sorted(AWKWARD_VALUES))
async def test_wire_query_escapes_delimiters(
    client: BingXClient, router: respx.Router, name: str
) -> None:
    """No raw '&', '#', '+', space or non-ASCII byte reaches the URL; '=' only separates."""
    request = await _send(client, router, {"value": AWKWARD_VALUES[name]})
    query = request.url.query
    assert query.isascii()
    for byte in (b"#", b"+", b" "):
        assert byte not in query
    assert all(part.count(b"=") == 1 for part in query.split(b"&"))


async def test_wire_signature_covers_list_and_bool_values(
    client: BingXClient, router: respx.Router
) -> None:
    """JSON and boolean values are signed in the form that is sent."""
    request = await _send(client, router, {"ids": ["a b", 2], "flag": True, "skip": None})
    pairs = _wire_pairs(request)
    assert dict(pairs)["ids"] == '["a b",2]'
    assert dict(pairs)["flag"] == "true"
    assert "skip" not in dict(pairs)
    assert pairs[-1][1] == _hmac(raw_query(pairs[:-1]))


async def test_wire_request_has_empty_body(client: BingXClient, router: respx.Router) -> None:
    """A signed POST carries everything in the query and nothing in the body."""
    request = await _send(client, router, {"value": "a b"})
    assert request.content == b""


def test_values_inside_lists_that_json_cannot_write_are_written_as_text() -> None:
    """A Decimal inside a list parameter becomes its text in the compact JSON."""
    assert canonical_pairs({"ids": [Decimal("1.5"), "é"]}) == [("ids", '["1.5","é"]')]
