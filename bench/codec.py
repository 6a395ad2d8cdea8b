"""
Micro-benchmark of the HTTP/1 codec: heads per second parsed and serialized
for a typical 10-header GET request and a typical response, on one core.

Run: .venv/bin/python bench/codec.py [--seconds N]
Prints one line per case; no assertion, timing goals live here, not in tests.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import measure  # noqa: E402

from meshproxy.http import (  # noqa: E402
    CLIENT,
    SERVER,
    HTTP1Parser,
    RequestHead,
    ResponseHead,
    requestHead,
    responseHead,
)

REQUEST = (
    b"GET /api/v1/items?id=12345&sort=asc HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=abcdef0123456789; theme=dark\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Cache-Control: max-age=0\r\n"
    b"X-Request-Id: 7f1c2a9e-1b2c-4d5e-8f90-123456789abc\r\n"
    b"\r\n"
)

RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Mon, 06 May 2024 10:00:00 GMT\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Length: 612\r\n"
    b"Last-Modified: Tue, 11 Apr 2023 01:45:34 GMT\r\n"
    b"Connection: keep-alive\r\n"
    b'ETag: "6434bbbe-264"\r\n'
    b"Accept-Ranges: bytes\r\n"
    b"\r\n"
)
RESPONSE = RESPONSE_HEAD + b"x" * 612


def parseRequests(n: int) -> None:
    """
    n keep-alive requests through one server-side parser, one feed each.
    """
    parser = HTTP1Parser(SERVER)
    feed = parser.feed
    nextEvent = parser.nextEvent
    for _ in range(n):
        feed(REQUEST)
        nextEvent()
        nextEvent()


def parseResponses(n: int) -> None:
    """
    n keep-alive responses (head + 612-byte body) through one client-side
    parser, one feed each.
    """
    parser = HTTP1Parser(CLIENT)
    feed = parser.feed
    nextEvent = parser.nextEvent
    expect = parser.expectResponse
    for _ in range(n):
        expect(b"GET")
        feed(RESPONSE)
        nextEvent()
        nextEvent()
        nextEvent()


def _parsed() -> tuple[RequestHead, ResponseHead]:
    server = HTTP1Parser(SERVER)
    server.feed(REQUEST)
    request = server.nextEvent()
    client = HTTP1Parser(CLIENT)
    client.expectResponse(b"GET")
    client.feed(RESPONSE)
    response = client.nextEvent()
    assert isinstance(request, RequestHead) and isinstance(response, ResponseHead)
    return request, response


def serializeRequests(n: int) -> None:
    """
    n request heads rebuilt from the parsed form.
    """
    head = _parsed()[0]
    method, target, headers = head.method, head.target, head.headers
    for _ in range(n):
        requestHead(method, target, headers)


def serializeResponses(n: int) -> None:
    """
    n response heads rebuilt from the parsed form.
    """
    head = _parsed()[1]
    status, reason, headers = head.status, head.reason, head.headers
    for _ in range(n):
        responseHead(status, reason, headers)


def main() -> None:
    """
    Print heads/s for each case.
    """
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--seconds", type=float, default=1.0)
    args = options.parse_args()
    print(f"python {sys.version.split()[0]} ({sys.implementation.name})")
    print(f"request {len(REQUEST)} bytes, 10 headers; response head {len(RESPONSE_HEAD)} bytes, 8 headers + 612-byte body")
    for name, run in [
        ("parse request (head + end)", parseRequests),
        ("parse response (head + body + end)", parseResponses),
        ("serialize request head", serializeRequests),
        ("serialize response head", serializeResponses),
    ]:
        rate = measure(run, args.seconds)
        print(f"{name:40s} {rate:12,.0f} heads/s  {1e6 / rate:6.2f} us/head")


if __name__ == "__main__":
    main()
