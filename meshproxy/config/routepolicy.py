"""
Reading a route action's policies: C{retry_policy} (MOSN's keys plus Envoy's C{retry_on} conditions and
C{retry_back_off}) and C{hash_policy} (what a consistent-hashing balancer hashes).
"""

from __future__ import annotations

from meshproxy.config.jsonvalues import describe, expectInteger
from meshproxy.config.reader import Fields, KeySpec, iterObjects
from meshproxy.config.routemodel import RETRY_CONDITIONS, HashPolicyConfig, RetryPolicyConfig

RETRY_POLICY_KEYS = KeySpec(
    known=("retry_on", "retry_timeout", "num_retries", "status_codes", "retry_back_off")
)
BACKOFF_KEYS = KeySpec(known=("base_interval", "max_interval"))
HASH_POLICY_KEYS = KeySpec(known=("header", "cookie", "source_ip"))
HASH_HEADER_KEYS = KeySpec(known=("key",))
HASH_COOKIE_KEYS = KeySpec(known=("name", "path", "ttl"))
HASH_SOURCE_KEYS = KeySpec(known=())
#: What MOSN's C{retry_on: true} retries.
MOSN_RETRY_ON = frozenset(("connect-failure", "reset", "retriable-status-codes"))
_COOKIE_NAME_BAD = set(' \t()<>@,;:\\"/[]?={}')


def parseRetryPolicy(fields: Fields | None) -> RetryPolicyConfig | None:
    """
    A route's C{retry_policy}: C{retry_on} is MOSN's boolean or Envoy's comma-separated conditions.
    """
    if fields is None:
        return None
    codes = []
    for path, element in fields.items("status_codes"):
        code = expectInteger(element, path, fields.problems, 100, 599)
        if code is not None:
            codes.append(code)
    retryOn = fields.raw("retry_on", False)
    conditions: frozenset[str] = frozenset()
    if isinstance(retryOn, bool):
        conditions = MOSN_RETRY_ON if retryOn else frozenset()
    elif isinstance(retryOn, str):
        named = [part.strip() for part in retryOn.split(",") if part.strip()]
        unknown = [name for name in named if name not in RETRY_CONDITIONS]
        if unknown or not named:
            fields.problem(
                "retry_on",
                f"{describe(retryOn)} is not a list of retry conditions: expected true/false or a "
                f"comma-separated list of {', '.join(RETRY_CONDITIONS)}",
            )
        conditions = frozenset(name for name in named if name in RETRY_CONDITIONS)
    else:
        fields.problem("retry_on", f"{describe(retryOn)} is not a boolean or a string of retry conditions")
    base, most = 0.025, 0.25
    backoff = fields.object("retry_back_off", BACKOFF_KEYS)
    if backoff is not None:
        base = backoff.duration("base_interval", base, positive=True) or base
        most = backoff.duration("max_interval", max(base * 10, most), positive=True) or most
        if most < base:
            backoff.problem("max_interval", f"{most:g}s is below base_interval {base:g}s: expected at least that")
    return RetryPolicyConfig(
        retryOn=bool(conditions),
        retryTimeout=fields.duration("retry_timeout", None, zeroIsNone=True),
        numRetries=fields.integer("num_retries", 0, 0, 10),
        statusCodes=tuple(codes),
        conditions=conditions,
        backoffBase=base,
        backoffMax=most,
    )


def parseHashPolicy(fields: Fields) -> tuple[HashPolicyConfig, ...]:
    """
    A route's C{hash_policy}: a list of objects with exactly one of C{header}, C{cookie}, C{source_ip}.
    """
    policies = []
    for path, policy in iterObjects(fields.items("hash_policy"), fields.problems, HASH_POLICY_KEYS):
        given = [key for key in ("header", "cookie", "source_ip") if policy.has(key)]
        if len(given) != 1:
            policy.problems.add(path, "a hash policy needs exactly one of 'header', 'cookie' and 'source_ip'")
            continue
        kind = given[0]
        if kind == "header":
            header = policy.object("header", HASH_HEADER_KEYS, required=True)
            if header is not None:
                name = header.string("key", required=True, nonEmpty=True)
                if name:
                    policies.append(HashPolicyConfig(kind="header", name=name.lower()))
        elif kind == "cookie":
            cookie = policy.object("cookie", HASH_COOKIE_KEYS, required=True)
            if cookie is not None:
                name = cookie.string("name", required=True, nonEmpty=True)
                if name and (_COOKIE_NAME_BAD & set(name) or not name.isprintable() or not name.isascii()):
                    cookie.problem("name", f"{describe(name)} is not a cookie name: expected a token")
                    continue
                path = cookie.string("path", "")
                if path and not path.startswith("/"):
                    cookie.problem("path", f"{describe(path)} is not a path: expected a path starting with '/'")
                if name:
                    policies.append(HashPolicyConfig(
                        kind="cookie", name=name, path=path, ttl=cookie.duration("ttl", None),
                    ))
        else:
            policy.object("source_ip", HASH_SOURCE_KEYS)
            policies.append(HashPolicyConfig(kind="source_ip"))
    return tuple(policies)
