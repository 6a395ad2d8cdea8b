"""
Problems found in a configuration, and the exception that reports all of them at once.

A configuration is read to the end even after the first mistake, so that an operator fixes every problem in
one round instead of one per restart.  Each L{Problem} names where it is (a JSON path spelt the way the file
spells its keys, such as C{servers[0].listeners[1].address}) and what is wrong with it.
"""

from __future__ import annotations

from typing import Iterable

import attrs


@attrs.frozen
class Problem:
    """
    One thing wrong with a configuration.

    @ivar path: where, as a JSON path (C{cluster_manager.clusters[2].hosts[0].weight}); C{$} is the whole
        document.
    @ivar message: what is wrong: the bad value and what was expected.
    """

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    """
    A configuration was rejected.

    @ivar problems: every problem found, in the order they were found.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


class Problems:
    """
    Collects problems while a configuration is read, so that all of them are reported together.
    """

    def __init__(self) -> None:
        self._found: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        """
        Record one problem at C{path}.
        """
        self._found.append(Problem(path or "$", message))

    def __len__(self) -> int:
        return len(self._found)

    def raiseIfAny(self) -> None:
        """
        Raise L{ConfigError} with everything recorded so far, if anything was.
        """
        if self._found:
            raise ConfigError(self._found)
