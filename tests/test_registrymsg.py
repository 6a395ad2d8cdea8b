"""
Tests for L{meshproxy.routing.registrymsg}: gorouter's NATS messages, request header values and error
replies.
"""

from __future__ import annotations

import json
import random

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.routing import registrymsg
from meshproxy.routing.registrymsg import (
    CONNECTION_LIMIT_REACHED, EMPTY_HOST, ENDPOINT_FAILURE, HEADERS_TOO_LARGE, INVALID_APP_INSTANCE_HEADER,
    NO_ENDPOINTS, ROUTER_ERRORS, TLS_HANDSHAKE_FAILED, UNKNOWN_APP_INSTANCE, UNKNOWN_PROCESS, UNKNOWN_ROUTE,
    InvalidMessage, RegistryMessage, encodeJSON, isEmptyHost, newRouterId, parseAppInstanceHeader,
    parseProcessInstanceHeader, parseRegistryMessage, routerStartPayload, stickySessionId,
)

#: What Diego's route-emitter sends (reference section 1.2).
EMITTER = {
    "host": "10.0.16.7",
    "port": 61012,
    "tls_port": 61014,
    "uris": ["dora.apps.example.com"],
    "protocol": "http1",
    "app": "5c8a2e1b-7d3f-4e2a-9b1c-0f6e5d4c3b2a",
    "private_instance_id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    "private_instance_index": "0",
    "server_cert_domain_san": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    "isolation_segment": "iso-1",
    "endpoint_updated_at_ns": 1763761409123456789,
    "tags": {"component": "route-emitter", "process_id": "5c8a2e1b", "process_type": "web"},
    "availability_zone": "z1",
    "route_service_url": "https://rs.example.com",
    "options": {"loadbalancing": "least-connection"},
    "stale_threshold_in_seconds": 30,
}


def parse(document: object) -> RegistryMessage:
    """
    Parse a JSON-encodable document that must be accepted.
    """
    result = parseRegistryMessage(json.dumps(document).encode("utf-8"))
    assert isinstance(result, RegistryMessage), result
    return result


class ParseTests(SynchronousTestCase):
    """
    Messages gorouter accepts, decoded field for field.
    """

    def test_routeEmitter(self) -> None:
        """
        Every field of a route-emitter message lands in its attribute; the TLS port wins.
        """
        message = parse(EMITTER)
        self.assertEqual(
            message,
            RegistryMessage(
                host="10.0.16.7", port=61012, tlsPort=61014, uris=("dora.apps.example.com",),
                tags={"component": "route-emitter", "process_id": "5c8a2e1b", "process_type": "web"},
                app="5c8a2e1b-7d3f-4e2a-9b1c-0f6e5d4c3b2a", staleThresholdInSeconds=30,
                routeServiceUrl="https://rs.example.com", privateInstanceId="a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
                privateInstanceIndex="0", serverCertDomainSAN="a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
                isolationSegment="iso-1", endpointUpdatedAtNs=1763761409123456789, protocol="http1",
                availabilityZone="z1", loadBalancing="least-connection",
            ),
        )
        self.assertTrue(message.tls)
        self.assertEqual(message.address, "10.0.16.7:61014")

    def test_routeRegistrarAndDefaults(self) -> None:
        """
        Absent fields have Go's zero values; without a TLS port the address uses C{port}.
        """
        message = parse({"uris": ["api.sys.example.com", "api2.sys.example.com"], "host": "10.0.1.5", "port": 9022})
        self.assertEqual(message.uris, ("api.sys.example.com", "api2.sys.example.com"))
        self.assertEqual((message.tls, message.address, message.tags, message.app), (False, "10.0.1.5:9022", None, ""))
        self.assertEqual((message.staleThresholdInSeconds, message.endpointUpdatedAtNs), (0, 0))

    def test_unknownKeysIgnored(self) -> None:
        """
        Keys gorouter does not know (old emitters send C{dea}, C{droplet}) are ignored, whatever their type.
        """
        message = parse({"host": "h", "dea": {"x": [1, 2.5, None]}, "droplet": 7, "http_version": "x"})
        self.assertEqual(message, RegistryMessage(host="h"))

    def test_keysCaseInsensitive(self) -> None:
        """
        Like Go's decoder, a key matches its field without regard to case, and the last one wins in
        document order.
        """
        self.assertEqual(parseRegistryMessage(b'{"HOST":"a","Port":1,"Options":{"LoadBalancing":"x"}}'),
                         RegistryMessage(host="a", port=1, loadBalancing="x"))
        self.assertEqual(parseRegistryMessage(b'{"host":"a","HOST":"b"}'), RegistryMessage(host="b"))
        self.assertEqual(parseRegistryMessage(b'{"HOST":"b","host":"a"}'), RegistryMessage(host="a"))

    def test_nullKeepsValue(self) -> None:
        """
        C{null} leaves a scalar field as it is, and clears a list or a map.
        """
        self.assertEqual(parseRegistryMessage(b'{"port":5,"port":null,"host":null,"options":null}'),
                         RegistryMessage(port=5))
        self.assertEqual(parseRegistryMessage(b'{"uris":["a"],"uris":null,"tags":{"a":"b"},"tags":null}'),
                         RegistryMessage())
        self.assertEqual(parseRegistryMessage(b'{"options":{"loadbalancing":"x"},"options":{"loadbalancing":null}}'),
                         RegistryMessage(loadBalancing="x"))

    def test_nullElements(self) -> None:
        """
        A C{null} uri or tag value is the empty string, as Go decodes it.
        """
        message = parse({"uris": ["a", None], "tags": {"k": None}})
        self.assertEqual((message.uris, message.tags), (("a", ""), {"k": ""}))

    def test_tagsEmptyAndMerged(self) -> None:
        """
        C{{}} tags are an empty map (not L{None}); a repeated C{tags} key adds to the map Go already has.
        """
        self.assertEqual(parse({"tags": {}}).tags, {})
        self.assertEqual(parseRegistryMessage(b'{"tags":{"a":"1","b":"2"},"tags":{"b":"3"}}'),
                         RegistryMessage(tags={"a": "1", "b": "3"}))

    def test_repeatedUrisReplace(self) -> None:
        """
        A repeated C{uris} key replaces the list.
        """
        self.assertEqual(parseRegistryMessage(b'{"uris":["a","b"],"uris":["c"]}').uris, ("c",))  # type: ignore[union-attr]

    def test_integerLimits(self) -> None:
        """
        Ports take 0 to 65535; the signed fields take the whole int64 range, C{-0} included.
        """
        self.assertEqual(parse({"port": 0, "tls_port": 65535}).tlsPort, 65535)
        message = parseRegistryMessage(
            b'{"stale_threshold_in_seconds":-5,"endpoint_updated_at_ns":9223372036854775807}'
        )
        self.assertEqual(message, RegistryMessage(staleThresholdInSeconds=-5, endpointUpdatedAtNs=(1 << 63) - 1))
        self.assertEqual(parseRegistryMessage(b'{"endpoint_updated_at_ns":-0}'), RegistryMessage())

    def test_nullPayload(self) -> None:
        """
        A JSON C{null} is an empty message, as Go decodes it (it registers nothing).
        """
        self.assertEqual(parseRegistryMessage(b" null "), RegistryMessage())

    def test_text(self) -> None:
        """
        A C{str} payload is accepted; invalid UTF-8 and unpaired surrogate escapes become U+FFFD, as Go
        decodes them; a surrogate pair is one character.
        """
        self.assertEqual(parseRegistryMessage('{"host":"h\u00e9"}'), RegistryMessage(host="h\u00e9"))
        self.assertEqual(parseRegistryMessage(b'{"host":"a\xffb"}'), RegistryMessage(host="a\ufffdb"))
        self.assertEqual(parseRegistryMessage(b'{"host":"\\ud800x","tags":{"\\udc00":"\\ud83d\\ude00"}}'),
                         RegistryMessage(host="\ufffdx", tags={"\ufffd": "\U0001F600"}))

    def test_routeServiceUrlPrefix(self) -> None:
        """
        gorouter only checks that a route service URL starts with C{https}.
        """
        self.assertEqual(parse({"route_service_url": "httpsfoo"}).routeServiceUrl, "httpsfoo")
        self.assertEqual(parse({"route_service_url": ""}).routeServiceUrl, "")


class RejectTests(SynchronousTestCase):
    """
    Messages gorouter drops: each gives a reason, none raises.
    """

    def assertRejected(self, payload: bytes, *words: str) -> None:
        """
        C{payload} is refused with a reason containing C{words}.
        """
        result = parseRegistryMessage(payload)
        self.assertIsInstance(result, InvalidMessage, payload)
        for word in words:
            self.assertIn(word, result.reason)  # type: ignore[union-attr]

    def test_typeMismatches(self) -> None:
        """
        Any value of the wrong Go type rejects the whole message, naming the field and the type.
        """
        cases = [
            ("port", '"8080"', "uint16"), ("port", "8080.0", "uint16"), ("port", "70000", "uint16"),
            ("port", "-1", "uint16"), ("port", "-0", "uint16"), ("port", "true", "uint16"), ("port", "1e3", "uint16"),
            ("tls_port", "65536", "uint16"), ("private_instance_index", "0", "string"), ("host", "1", "string"),
            ("app", "false", "string"), ("protocol", "[]", "string"), ("availability_zone", "{}", "string"),
            ("uris", '"a.com"', "[]route.Uri"), ("uris", "[1]", "uris"), ("uris", "{}", "[]route.Uri"),
            ("tags", "[]", "map[string]string"), ("tags", '{"a":1}', "tags.a"), ("tags", '"x"', "map"),
            ("stale_threshold_in_seconds", '"30"', "int"), ("stale_threshold_in_seconds", "1.5", "int"),
            ("endpoint_updated_at_ns", "9223372036854775808", "int64"), ("endpoint_updated_at_ns", '"1"', "int64"),
            ("options", '"least-connection"', "options"), ("options", '{"loadbalancing":1}', "loadbalancing"),
            ("route_service_url", "1", "route_service_url"), ("isolation_segment", "true", "isolation_segment"),
            ("server_cert_domain_san", "1", "server_cert_domain_san"), ("private_instance_id", "[]", "string"),
        ]
        for field, value, word in cases:
            self.assertRejected(b'{"host":"h","%s":%s}' % (field.encode(), value.encode()), "cannot unmarshal", word)

    def test_mismatchAfterGoodFields(self) -> None:
        """
        A bad field rejects the message even after good ones (Go reports the first type error).
        """
        self.assertRejected(b'{"host":"h","port":1,"uris":["a"],"private_instance_index":0}', "private_instance_index")

    def test_notJSON(self) -> None:
        """
        Invalid JSON, Python-only constants, trailing garbage, a BOM and non-object documents are refused.
        """
        for payload in (b"", b"{", b'{"host":}', b"{'host':'h'}", b'{"port":NaN}', b'{"port":Infinity}',
                        b'{"host":"h"} x', b'\xef\xbb\xbf{"host":"h"}', b'{"host":"a\x01"}', b"[" * 100000):
            self.assertRejected(payload, "invalid JSON")
        for payload, kind in ((b"[]", "array"), (b'"x"', "string"), (b"1", "number"), (b"true", "bool")):
            self.assertRejected(payload, kind, "mbus.RegistryMessage")

    def test_routeServiceUrlNotHttps(self) -> None:
        """
        A route service URL not starting with C{https} rejects the whole message, with gorouter's words.
        """
        result = parseRegistryMessage(b'{"host":"h","uris":["a"],"route_service_url":"http://rs"}')
        self.assertEqual(result, InvalidMessage("Unable to validate message. route_service_url must be https"))

    def test_neverRaises(self) -> None:
        """
        Every prefix of a real message and random mutations of it give a message or a reason.
        """
        payload = json.dumps(EMITTER).encode()
        rng = random.Random(7)
        samples = [payload[:n] for n in range(len(payload) + 1)]
        for _ in range(300):
            mutated = bytearray(payload)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            samples.append(bytes(mutated))
        for sample in samples:
            self.assertIsInstance(parseRegistryMessage(sample), (RegistryMessage, InvalidMessage))


class RouterStartTests(SynchronousTestCase):
    """
    The C{router.start} message and C{router.greet} reply.
    """

    def test_payload(self) -> None:
        """
        Go's field order and compact encoding, whole seconds.
        """
        payload = routerStartPayload(newRouterId(0, "9f0c2d8e-1b7a-4c55-6a3e-2d1f0e9b7c44"), ["10.0.16.5"], 20.0, 120.0)
        self.assertEqual(
            payload,
            b'{"id":"0-9f0c2d8e-1b7a-4c55-6a3e-2d1f0e9b7c44","hosts":["10.0.16.5"],'
            b'"minimumRegisterIntervalInSeconds":20,"pruneThresholdInSeconds":120}',
        )

    def test_truncatedSeconds(self) -> None:
        """
        Fractions of a second are dropped, as Go's C{int(d.Seconds())}.
        """
        decoded = json.loads(routerStartPayload("1-x", ["a", "b"], 5.9, 120.99))
        self.assertEqual(decoded, {"id": "1-x", "hosts": ["a", "b"], "minimumRegisterIntervalInSeconds": 5,
                                   "pruneThresholdInSeconds": 120})

    def test_intervalAtLeastOneSecond(self) -> None:
        """
        An interval under a second would crash route-emitters: it is refused.
        """
        self.assertRaises(ValueError, routerStartPayload, "0-x", ["h"], 0.5, 120)
        self.assertRaises(ValueError, routerStartPayload, "0-x", ["h"], 0, 120)

    def test_goEscaping(self) -> None:
        """
        Like Go's encoder, C{<}, C{>}, C{&} and the line separators are escaped; other text is UTF-8.
        """
        self.assertEqual(encodeJSON({"a": "<&>\u2028\u2029\u00e9", "b": [None, True, 1]}),
                         b'{"a":"\\u003c\\u0026\\u003e\\u2028\\u2029\xc3\xa9","b":[null,true,1]}')


class HeaderTests(SynchronousTestCase):
    """
    The request header values gorouter reads.
    """

    GUID = b"5c8a2e1b-7d3f-4e2a-9b1c-0f6e5d4c3b2a"

    def test_appInstance(self) -> None:
        """
        C{guid:index} with a lower-case hex guid; anything else is malformed.
        """
        self.assertEqual(parseAppInstanceHeader(self.GUID + b":12"), (self.GUID.decode(), "12"))
        for bad in (self.GUID, self.GUID + b":", self.GUID.upper() + b":1", self.GUID + b":1\n",
                    self.GUID + b":1:2", b"x" + self.GUID + b":1", self.GUID + b":-1", b"", self.GUID[:-1] + b":1"):
            self.assertIsNone(parseAppInstanceHeader(bad), bad)

    def test_processInstance(self) -> None:
        """
        C{guid} alone (any index) or C{guid:index}.
        """
        self.assertEqual(parseProcessInstanceHeader(self.GUID), (self.GUID.decode(), ""))
        self.assertEqual(parseProcessInstanceHeader(self.GUID + b":3"), (self.GUID.decode(), "3"))
        for bad in (self.GUID + b":", self.GUID + b"\n", b"guid:1", self.GUID.upper()):
            self.assertIsNone(parseProcessInstanceHeader(bad), bad)

    def test_stickyNeedsBothCookies(self) -> None:
        """
        C{__VCAP_ID__} counts only with a session cookie, in any C{Cookie} line, in any order.
        """
        self.assertEqual(stickySessionId([b"JSESSIONID=abc; __VCAP_ID__=inst-1"]), b"inst-1")
        self.assertEqual(stickySessionId([b"__VCAP_ID__=inst-1", b"a=b;JSESSIONID=x"]), b"inst-1")
        self.assertIsNone(stickySessionId([b"__VCAP_ID__=inst-1"]))
        self.assertIsNone(stickySessionId([b"JSESSIONID=abc"]))
        self.assertIsNone(stickySessionId([]))

    def test_stickyCookieParsing(self) -> None:
        """
        Go's cookie reading: first value wins, quotes dropped, invalid names or values skipped,
        configurable session cookie names.
        """
        self.assertEqual(stickySessionId([b' JSESSIONID=1 ;__VCAP_ID__="q1"; __VCAP_ID__=q2']), b"q1")
        self.assertEqual(stickySessionId([b"JSESSIONID=1; __VCAP_ID__=bad\\value; __VCAP_ID__=ok"]), b"ok")
        self.assertEqual(stickySessionId([b"JSESSIONID=1; __VCAP_ID__=10.0.0.1:8080"]), b"10.0.0.1:8080")
        self.assertIsNone(stickySessionId([b"JSESSIONID=1; bad name=x"]))
        self.assertEqual(stickySessionId([b"SID=1; __VCAP_ID__=i"], [b"SID"]), b"i")
        self.assertIsNone(stickySessionId([b"JSESSIONID=1; __VCAP_ID__=i"], [b"SID"]))

    def test_emptyHost(self) -> None:
        """
        No Host, or a Host naming the client's own address (port ignored), is an empty host; for an
        IPv6 client Go compares C{[}, so every bracketed Host is.
        """
        self.assertTrue(isEmptyHost(None, "1.2.3.4"))
        self.assertTrue(isEmptyHost(b"", None))
        self.assertTrue(isEmptyHost(b"127.0.0.1:8080", "127.0.0.1"))
        self.assertTrue(isEmptyHost(b"127.0.0.1", "127.0.0.1"))
        self.assertFalse(isEmptyHost(b"127.0.0.2", "127.0.0.1"))
        self.assertFalse(isEmptyHost(b"app.example.com", "127.0.0.1"))
        self.assertTrue(isEmptyHost(b"[::2]:80", "::1"))
        self.assertFalse(isEmptyHost(b"app.example.com", "::1"))
        self.assertFalse(isEmptyHost(b"127.0.0.1", None))


class ErrorCatalogueTests(SynchronousTestCase):
    """
    gorouter's error replies, byte for byte.
    """

    def test_unknownRoute(self) -> None:
        """
        404 with the Host as sent, port included, and no caching.
        """
        reply = UNKNOWN_ROUTE.reply(host=b"nope.example.com:8080")
        self.assertEqual(reply.status, 404)
        self.assertEqual(reply.body, b"404 Not Found: Requested route ('nope.example.com:8080') does not exist.\n")
        self.assertEqual(dict(reply.headers), {
            b"X-Cf-Routererror": b"unknown_route", b"Cache-Control": b"no-cache, no-store",
            b"Content-Type": b"text/plain; charset=utf-8", b"X-Content-Type-Options": b"nosniff",
        })

    def test_bodies(self) -> None:
        """
        Every other entry's status, router error and body.
        """
        cases = [
            (EMPTY_HOST.reply(), 400, b"empty_host", b"400 Bad Request: Request had empty Host header\n"),
            (NO_ENDPOINTS.reply(host="a.com"), 503, b"no_endpoints",
             b"503 Service Unavailable: Requested route ('a.com') has no available endpoints.\n"),
            (INVALID_APP_INSTANCE_HEADER.reply(), 400, b"invalid_cf_app_instance_header",
             b"400 Bad Request: Invalid X-CF-App-Instance Header\n"),
            (UNKNOWN_APP_INSTANCE.reply(host="a.com", guid="g", index="2"), 400, b"unknown_route",
             b"400 Bad Request: Requested instance ('2') with guid ('g') does not exist for route ('a.com')\n"),
            (UNKNOWN_PROCESS.reply(host="a.com", guid="g"), 400, b"unknown_route",
             b"400 Bad Request: Requested instance with process guid ('g') does not exist for route ('a.com')\n"),
            (CONNECTION_LIMIT_REACHED.reply(host="a.com"), 503, b"Connection Limit Reached",
             b"503 Service Unavailable: Requested route ('a.com') has reached the connection limit.\n"),
            (ENDPOINT_FAILURE.reply(), 502, b"endpoint_failure",
             b"502 Bad Gateway: Registered endpoint failed to handle the request.\n"),
            (TLS_HANDSHAKE_FAILED.reply(), 525, b"endpoint_failure", b"525 SSL Handshake Failed\n"),
        ]
        for reply, status, routerError, body in cases:
            self.assertEqual((reply.status, dict(reply.headers)[b"X-Cf-Routererror"], reply.body),
                             (status, routerError, body))

    def test_cacheControl(self) -> None:
        """
        Empty host and no endpoints may be cached two seconds; unknown routes never; endpoint failures
        say nothing.
        """
        self.assertEqual(dict(EMPTY_HOST.reply().headers)[b"Cache-Control"], b"public,max-age=2")
        self.assertEqual(dict(NO_ENDPOINTS.reply(host="h").headers)[b"Cache-Control"], b"public,max-age=2")
        self.assertNotIn(b"Cache-Control", dict(ENDPOINT_FAILURE.reply().headers))

    def test_detail(self) -> None:
        """
        A detail goes into the router error header in parentheses.
        """
        reply = ENDPOINT_FAILURE.reply(detail="dial tcp 10.0.0.1:8080: connect: connection refused")
        self.assertEqual(dict(reply.headers)[b"X-Cf-Routererror"],
                         b"endpoint_failure (dial tcp 10.0.0.1:8080: connect: connection refused)")

    def test_emptyBody(self) -> None:
        """
        Headers too large: 431 with no body and no content type.
        """
        reply = HEADERS_TOO_LARGE.reply()
        self.assertEqual((reply.status, reply.body), (431, b""))
        self.assertEqual(dict(reply.headers), {b"X-Cf-Routererror": b"max-request-size-exceeded"})

    def test_rawHostBytes(self) -> None:
        """
        A Host that is not UTF-8 is written back as it came.
        """
        self.assertIn(b"('a\xff.com')", UNKNOWN_ROUTE.reply(host=b"a\xff.com").body)

    def test_catalogue(self) -> None:
        """
        Every entry is in the catalogue under its own name.
        """
        entries = [v for v in vars(registrymsg).values() if isinstance(v, registrymsg.RouterError)]
        self.assertEqual(len(entries), len(ROUTER_ERRORS))
        for entry in entries:
            self.assertIs(ROUTER_ERRORS[entry.name], entry)
