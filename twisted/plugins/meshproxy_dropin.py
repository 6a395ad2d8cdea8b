"""
twistd plugin for meshproxy: C{twistd -n meshproxy --config FILE}.

Imported on every plugin scan, so it names the module and imports nothing heavy.
"""

from twisted.application.service import ServiceMaker

meshproxy = ServiceMaker(
    "meshproxy",
    "meshproxy.tap",
    "Protocol-multiplexing proxy (MOSN v2 config, TCP/HTTP/TLS sniffing).",
    "meshproxy",
)
