"""
The "not enough bytes yet" answer shared by the sniffing parsers.

The PROXY header parser, the ClientHello parser and the classifier are pure functions that are called again
on a growing buffer each time bytes arrive.  When the bytes seen so far are a prefix of something they could
still accept, they return L{NEED_MORE} instead of a result or an error.  It is the single member of an enum so
that it is a true singleton (it survives copying and pickling) and so that type checkers narrow both
C{result is NEED_MORE} and C{isinstance(result, NeedMore)}.
"""

from __future__ import annotations

import enum
from typing import Final


class NeedMore(enum.Enum):
    """
    The type of L{NEED_MORE}: a parser needs more bytes before it can answer.
    """

    NEED_MORE = "NEED_MORE"

    def __repr__(self) -> str:
        return "NEED_MORE"

    __str__ = __repr__


NEED_MORE: Final = NeedMore.NEED_MORE
