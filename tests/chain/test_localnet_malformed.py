"""Malformed JSON-RPC and HTTP get the spec's error objects; the localnet keeps serving afterwards."""

from __future__ import annotations

import base64
import socket

import httpx2
import pytest
import trio


async def _post(url: str, content: bytes | str, **kw) -> httpx2.Response:
    async with httpx2.AsyncClient() as h:
        return await h.post(url, content=content, headers={"content-type": "application/json"}, **kw)


async def _alive(url: str) -> None:
    r = (await _post(url, '{"jsonrpc":"2.0","id":9,"method":"getHealth"}')).json()
    assert r == {"jsonrpc": "2.0", "result": "ok", "id": 9}


@pytest.mark.parametrize("body, code, rid", [
    ("{not json", -32700, None),
    ("", -32700, None),
    ("\xff\xfe", -32700, None),
    ("[]", -32600, None),
    ("42", -32600, None),
    ('{"jsonrpc":"1.0","id":1,"method":"getSlot"}', -32600, 1),
    ('{"jsonrpc":"2.0","id":2}', -32600, 2),
    ('{"jsonrpc":"2.0","id":[1],"method":"getSlot"}', -32600, None),
    ('{"jsonrpc":"2.0","id":3,"method":"noSuchMethod"}', -32601, 3),
    ('{"jsonrpc":"2.0","id":4,"method":"p2pnode_nope","params":[]}', -32601, 4),
    ('{"jsonrpc":"2.0","id":5,"method":"getBalance","params":["not-a-key"]}', -32602, 5),
    ('{"jsonrpc":"2.0","id":6,"method":"getBalance","params":[]}', -32602, 6),
    ('{"jsonrpc":"2.0","id":7,"method":"getBalance","params":{"a":1}}', -32602, 7),
    ('{"jsonrpc":"2.0","id":8,"method":"getBalance","params":[12]}', -32602, 8),
    ('{"jsonrpc":"2.0","id":"s","method":"sendTransaction","params":["!!!"]}', -32602, "s"),
    ('{"jsonrpc":"2.0","id":10,"method":"sendTransaction","params":["AAAA",{"encoding":"base64"}]}', -32602, 10),
    ('{"jsonrpc":"2.0","id":11,"method":"sendTransaction","params":["AAAA",{"encoding":"hex"}]}', -32602, 11),
    ('{"jsonrpc":"2.0","id":12,"method":"getMultipleAccounts","params":[["11111111111111111111111111111111"],'
     '{"encoding":"zip"}]}', -32602, 12),
    ('{"jsonrpc":"2.0","id":13,"method":"requestAirdrop","params":["11111111111111111111111111111111",-5]}',
     -32602, 13),
    ('{"jsonrpc":"2.0","id":14,"method":"getSignatureStatuses","params":[["xyz"]]}', -32602, 14),
    ('{"jsonrpc":"2.0","id":15,"method":"getTokenAccountBalance","params":["11111111111111111111111111111111"]}',
     -32602, 15),
    ('{"jsonrpc":"2.0","id":16,"method":"getMinimumBalanceForRentExemption","params":[true]}', -32602, 16),
])
async def test_error_objects(localnet, body, code, rid):
    resp = await _post(localnet.url, body.encode("latin-1"))
    assert resp.status_code == 200
    msg = resp.json()
    assert msg["jsonrpc"] == "2.0" and msg["id"] == rid, msg
    assert msg["error"]["code"] == code and isinstance(msg["error"]["message"], str), msg
    await _alive(localnet.url)


async def test_batch_mixed_and_notifications(localnet):
    body = ('[{"jsonrpc":"2.0","id":1,"method":"getSlot"},{"jsonrpc":"2.0","id":2,"method":"nope"},7,'
            '{"jsonrpc":"2.0","method":"getSlot"}]')
    out = (await _post(localnet.url, body)).json()
    assert [m.get("id") for m in out] == [1, 2, None]
    assert isinstance(out[0]["result"], int) and out[1]["error"]["code"] == -32601
    assert out[2]["error"]["code"] == -32600
    only_notes = await _post(localnet.url, '{"jsonrpc":"2.0","method":"getSlot"}')
    assert only_notes.status_code == 200 and only_notes.content == b""


async def test_oversized_and_wrong_http(localnet):
    big = b'{"jsonrpc":"2.0","id":1,"method":"getSlot","params":["' + b"a" * 60_000 + b'"]}'
    assert (await _post(localnet.url, big)).status_code == 413
    async with httpx2.AsyncClient() as h:
        assert (await h.get(localnet.url)).status_code == 405
        assert (await h.get(localnet.url + "/health")).text == "ok"
        assert (await h.post(localnet.url + "/other", json={})).status_code == 404
    await _alive(localnet.url)


async def test_oversized_transaction_is_invalid_params(localnet):
    tx = base64.b64encode(b"\x01" + b"\x00" * 1300).decode()
    msg = (await _post(localnet.url, '{"jsonrpc":"2.0","id":1,"method":"sendTransaction","params":["%s",'
                                     '{"encoding":"base64"}]}' % tx)).json()
    assert msg["error"]["code"] == -32602 and "too large" in msg["error"]["message"]


async def test_garbage_http_and_slow_clients_do_not_stop_the_server(localnet):
    host, port = localnet.url.removeprefix("http://").rsplit(":", 1)

    def raw(payload: bytes) -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
            return b"".join(chunks)

    assert raw(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(b"") == b""
    # A half-sent request from a client that then vanishes.
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"")
    s.close()
    # Keep-alive: several requests on one connection.
    async with httpx2.AsyncClient() as h:
        for i in range(5):
            r = (await h.post(localnet.url, json={"jsonrpc": "2.0", "id": i, "method": "getSlot"})).json()
            assert r["id"] == i
    await trio.sleep(0)
    await _alive(localnet.url)
