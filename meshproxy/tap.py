"""
twistd integration: C{twistd -n meshproxy --config FILE}.

The only module (with L{meshproxy.cli}) that touches the global reactor.
"""

from __future__ import annotations

import sys

from twisted.application.service import IService
from twisted.python import usage

from meshproxy.config import ConfigError

DEFAULT_CONFIG = "/etc/meshproxy.json"


class Options(usage.Options):
    """
    Command-line options of the meshproxy twistd plugin.
    """

    synopsis = "[--config FILE]"
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The MOSN v2 JSON configuration file."],
    ]


def makeService(options: Options) -> IService:
    """
    Parse the config and build the service tree; a bad config prints every problem and exits 1.
    """
    from twisted.internet import reactor

    from meshproxy.service import MeshProxyService, loadConfigFile

    path = options["config"]
    try:
        config = loadConfigFile(path)
        return MeshProxyService(config, reactor, configPath=path, installSignalHandlers=True, fastPoll=True)
    except ConfigError as e:
        sys.stderr.write(f"meshproxy: {path}: invalid configuration:\n{e}\n")
        sys.stderr.flush()
        raise SystemExit(1)
