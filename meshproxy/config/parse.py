"""
L{parseConfig}: a MOSN v2 JSON document to a L{Config}, or a L{ConfigError} listing every problem.

Top-level MOSN keys accepted although meshproxy does not implement them, because they match what it does
anyway: C{disable_upgrade: true} (meshproxy has no MOSN-style hot upgrade), C{inherit_old_mosnconfig: false},
C{pid: ""}, and empty (C{{}}, C{[]} or null) C{tracing}, C{metrics}, C{pprof}, C{plugin}, C{extends},
C{third_part_codec}, C{wasm_global_plugins}, C{dynamic_resources}, C{static_resources}, C{node} and
C{uds_dir}.

The admin interface is MOSN's C{admin.address.socket_address{address, port_value}}, or the meshproxy
extension C{admin.endpoint} (a Twisted endpoint string, or C{host:port}); without C{admin} it listens on
L{DEFAULT_ADMIN_ENDPOINT}.
"""

from __future__ import annotations

from typing import Any

from meshproxy.config.addresses import AddressError, listenerEndpoint, socketEndpoint
from meshproxy.config.clusters import parseClusterManager
from meshproxy.config.errors import Problems
from meshproxy.config.jsonvalues import didYouMean, loadJSON
from meshproxy.config.listeners import parseServers
from meshproxy.config.model import DEFAULT_ADMIN_ENDPOINT, AdminConfig, Config
from meshproxy.config.registry import parseRouterRegistry
from meshproxy.config.reader import Fields, KeySpec, objectPairs, readObject, tolerateEmpty, tolerateValues

TOP_LEVEL_KEYS = KeySpec(
    # router_registry: meshproxy extension (gorouter-compatible route registration over NATS)
    known=("servers", "cluster_manager", "admin", "router_registry"),
    unsupported={
        "disable_upgrade": tolerateValues(True),
        "inherit_old_mosnconfig": tolerateValues(False),
        "close_graceful": None,
        "tracing": tolerateEmpty(),
        "metrics": tolerateEmpty(),
        "pprof": tolerateEmpty(),
        "dynamic_resources": tolerateEmpty(),
        "static_resources": tolerateEmpty(),
        "node": tolerateEmpty(),
        "pid": tolerateEmpty(),
        "uds_dir": tolerateEmpty(),
        "plugin": tolerateEmpty(),
        "third_part_codec": tolerateEmpty(),
        "extends": tolerateEmpty(),
        "wasm_global_plugins": tolerateEmpty(),
    },
)
ADMIN_KEYS = KeySpec(known=("address", "endpoint"))
ADMIN_ADDRESS_KEYS = KeySpec(known=("socket_address",))
SOCKET_ADDRESS_KEYS = KeySpec(known=("address", "port_value"))


def parseConfig(data: bytes | str) -> Config:
    """
    Parse and validate a MOSN v2 JSON configuration.

    @raise ConfigError: listing every problem found, each with its JSON path.
    """
    return parseConfigObject(loadJSON(data))


def parseConfigObject(document: Any) -> Config:
    """
    Validate an already decoded JSON document (plain C{dict}s and C{list}s are fine).

    @raise ConfigError: listing every problem found, each with its JSON path.
    """
    problems = Problems()
    top = readObject(document, "", problems, TOP_LEVEL_KEYS)
    if top is None:
        problems.raiseIfAny()
        raise AssertionError("unreachable: a non-object document is a problem")
    clusters = parseClusterManager(top.raw("cluster_manager"), top.pathOf("cluster_manager"), problems)
    clusterNames = [cluster.name for cluster in clusters if cluster.name]

    def checkCluster(name: str, path: str) -> None:
        if name in clusterNames:
            return
        if not clusterNames:
            problems.add(path, f"unknown cluster {name!r}: cluster_manager.clusters defines no clusters")
            return
        known = ", ".join(repr(known) for known in clusterNames)
        problems.add(
            path, f"unknown cluster {name!r}{didYouMean(name, clusterNames)}: defined clusters are {known}"
        )

    servers = parseServers(top.items("servers", required=True, nonEmpty=True), problems, checkCluster)
    admin = _admin(top.object("admin", ADMIN_KEYS))
    registry = parseRouterRegistry(top)
    if registry is None:
        _registryUsers(top, problems)
    problems.raiseIfAny()
    return Config(servers=servers, clusters=clusters, admin=admin, routerRegistry=registry)


def _registryUsers(top: Fields, problems: Problems) -> None:
    """
    A C{proxy} filter with C{use_router_registry} needs the top-level C{router_registry}.
    """
    def get(value: Any, key: str) -> Any:
        pairs = objectPairs(value)
        return dict(pairs).get(key) if pairs is not None else None

    def elements(value: Any) -> list[Any]:
        return value if isinstance(value, list) else []

    for i, server in enumerate(elements(top.raw("servers"))):
        for j, listener in enumerate(elements(get(server, "listeners"))):
            for k, chain in enumerate(elements(get(listener, "filter_chains"))):
                for m, network in enumerate(elements(get(chain, "filters"))):
                    if get(get(network, "config"), "use_router_registry") is True:
                        problems.add(
                            f"servers[{i}].listeners[{j}].filter_chains[{k}].filters[{m}].config.use_router_registry",
                            "needs the top-level 'router_registry' section (NATS servers and the registry's settings)",
                        )


def _admin(fields: Fields | None) -> AdminConfig:
    if fields is None:
        return AdminConfig()
    if fields.has("address") and fields.has("endpoint"):
        fields.problems.add(fields.path, "give 'address' (MOSN) or 'endpoint' (meshproxy), not both")
    if fields.has("endpoint"):
        endpoint = fields.string("endpoint", nonEmpty=True)
        try:
            return AdminConfig(endpoint=listenerEndpoint(endpoint)) if endpoint else AdminConfig()
        except AddressError as e:
            fields.problem("endpoint", str(e))
            return AdminConfig()
    address = fields.object("address", ADMIN_ADDRESS_KEYS)
    if address is None:
        return AdminConfig()
    socket = address.object("socket_address", SOCKET_ADDRESS_KEYS, required=True)
    if socket is None:
        return AdminConfig()
    host = socket.string("address")
    port = socket.integer("port_value", 0, 0, 65535, required=True)
    if not host:
        return AdminConfig(endpoint=f"tcp:{port}")
    try:
        return AdminConfig(endpoint=socketEndpoint(host, port))
    except AddressError as e:
        socket.problem("address", str(e))
        return AdminConfig(endpoint=DEFAULT_ADMIN_ENDPOINT)
