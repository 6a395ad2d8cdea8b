"""
The C{meshproxy} console script: C{meshproxy run --config FILE} and C{meshproxy check-config FILE}.
"""

from __future__ import annotations

import argparse
import sys

from meshproxy.config import ConfigError


def checkConfig(path: str) -> int:
    """
    Validate C{path}: print a summary and return 0, or print every problem and return 1.
    """
    from meshproxy.service import loadConfigFile

    try:
        config = loadConfigFile(path)
    except ConfigError as e:
        print(f"{path}: invalid configuration:\n{e}", file=sys.stderr)
        return 1
    print(f"{path}: OK ({len(config.listeners)} listeners, {len(config.clusters)} clusters)")
    return 0


def run(path: str, extra: list[str]) -> int:
    """
    Run meshproxy in the foreground through twistd (logging to stdout, no pid file).
    """
    from twisted.scripts.twistd import run as twistdRun

    sys.argv = ["meshproxy", "--nodaemon", "--pidfile=", *extra, "meshproxy", "--config", path]
    twistdRun()
    return 0


def main(argv: list[str] | None = None) -> int:
    """
    Entry point of the C{meshproxy} console script.
    """
    parser = argparse.ArgumentParser(prog="meshproxy", description="Protocol-multiplexing proxy on Twisted.")
    commands = parser.add_subparsers(dest="command", required=True)
    runParser = commands.add_parser("run", help="run in the foreground (as twistd -n meshproxy)")
    runParser.add_argument("--config", "-c", default="/etc/meshproxy.json", help="the MOSN v2 JSON config file")
    runParser.add_argument("twistdArgs", nargs="*", help="extra twistd options, after --")
    checkParser = commands.add_parser("check-config", help="validate a config file and exit")
    checkParser.add_argument("path", help="the config file")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return checkConfig(args.path)
    return run(args.config, args.twistdArgs)


if __name__ == "__main__":
    raise SystemExit(main())
