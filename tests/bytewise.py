"""
Assertions that feed a sniffing parser its input one byte at a time.

The sniffer calls each parser again on its growing buffer whenever bytes arrive, and TCP may split the stream
anywhere, so a parser must give the same answer however the bytes came.  Since the parsers are pure functions
of the buffer, feeding one byte at a time means calling them on every prefix.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.needmore import NEED_MORE

T = TypeVar("T")


def assertBytewise(
    testCase: SynchronousTestCase, parse: Callable[[bytes], object], data: bytes, expected: object
) -> None:
    """
    Assert that every strict prefix of C{data}, the empty one included, parses as L{NEED_MORE} and that
    C{data} itself parses as C{expected}.
    """
    for end in range(len(data)):
        result = parse(data[:end])
        if result is not NEED_MORE:
            testCase.fail("%r gave %r, not NEED_MORE" % (data[:end], result))
    testCase.assertEqual(parse(data), expected)


def assertDecidedAt(
    testCase: SynchronousTestCase,
    parse: Callable[[bytes], object],
    data: bytes,
    length: int,
    expected: object,
) -> None:
    """
    Assert that a parser waits on every prefix of C{data} shorter than C{length} bytes and answers
    C{expected} from C{length} bytes on, up to all of C{data}: the answer comes as soon as the byte that
    decides it arrives, and more bytes do not change it.
    """
    testCase.assertTrue(0 < length <= len(data), "decision point outside the input")
    for end in range(length):
        result = parse(data[:end])
        if result is not NEED_MORE:
            testCase.fail("%r gave %r, not NEED_MORE" % (data[:end], result))
    for end in range(length, len(data) + 1):
        testCase.assertEqual(parse(data[:end]), expected, "after %d bytes: %r" % (end, data[:end]))


def firstDecided(parse: Callable[[bytes], T], data: bytes) -> tuple[int, T] | None:
    """
    Feed C{data} one byte at a time and return how many bytes gave the first answer other than
    L{NEED_MORE}, with that answer; L{None} if none did.
    """
    for end in range(len(data) + 1):
        result = parse(data[:end])
        if result is not NEED_MORE:
            return end, result
    return None
