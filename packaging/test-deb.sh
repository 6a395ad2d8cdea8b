#!/bin/bash
# End-to-end test of meshproxy's Debian package: build, lint, install, run, remove, purge.
#
#   sudo packaging/test-deb.sh
#
# Needs root: it installs missing build dependencies and tools with apt-get, installs and purges
# the package, and starts meshproxy as the package's `meshproxy` user.
#
# 1. apt-get installs what is missing (build dependencies, lintian, curl, iproute2).
# 2. packaging/build-deb.sh builds the .deb in a temporary directory (running the unit tests
#    against Debian's Twisted).
# 3. lintian (as nobody): any E: or W: fails the test.
# 4. apt-get install ./meshproxy_*.deb; checks the user, the conffile, the enabled service and the
#    disabled socket, the twistd plugin and Twisted's plugin cache; systemd-analyze verify on the
#    installed units.
# 5. Runs the unit's ExecStart command line as the unit's User= with only the unit's ambient
#    capabilities (setpriv), since systemd is usually not PID 1 where this runs. It runs in a
#    private network namespace (unshare --net), so the default config's ports (8080, 8081, 9901)
#    never collide with anything else on the machine; without namespaces it uses the host's
#    loopback and fails if those ports are taken. Curls the demo listener, the L4 relay and the
#    admin /ready (and SIGHUP/SIGUSR1 once meshproxy handles them); SIGTERM must end it with exit
#    status 0. A second run on port 80 checks that CAP_NET_BIND_SERVICE alone lets the service user
#    bind a privileged port; a third gets its listener from systemd-socket-activate on
#    meshproxy.socket's ListenStream= address (systemd:domain=INET:index=0).
# 6. apt-get remove (plugin and its cache entry gone, config and user kept), then purge (user,
#    group, /etc/meshproxy.json, logs and unit symlinks gone).
#
# Everything it starts or installs is stopped or purged on exit, failure included. A meshproxy
# package that this script did not install is never touched: it refuses to run instead (set
# MESHPROXY_TEST_DEB_REPLACE=1 to let it purge that one). One run at a time per machine (a lock).
# Takes about 35-40 s on a 2-core machine once the build dependencies are installed (half of it the
# build with its unit tests), about 55 s when it has to install them first.
set -euo pipefail
umask 022

here=$(cd "$(dirname "$0")" && pwd)

if [ "$(id -u)" -ne 0 ]; then
    echo "test-deb.sh: needs root (apt-get, dpkg, the meshproxy user)" >&2
    exit 1
fi

# Waits up to 5 minutes for another apt-get or dpkg to finish rather than failing at once.
APT_GET=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300)
UNIT=/lib/systemd/system/meshproxy.service
SOCKET_UNIT=/lib/systemd/system/meshproxy.socket
CONFIG=/etc/meshproxy.json
PLUGINS=/usr/lib/python3/dist-packages/twisted/plugins
DROPIN=$PLUGINS/meshproxy_dropin.py
# Present while a package this script installed may be on the machine.
MARKER=/var/tmp/meshproxy-test-deb.installed
# A clean environment for what runs as the service user, as systemd gives a service.
SERVICE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# One run at a time on a machine: they would install and purge the same package.
exec 9>/run/lock/meshproxy-test-deb.lock
if ! flock -w 600 9; then
    echo "test-deb.sh: another test-deb.sh run still holds /run/lock/meshproxy-test-deb.lock after 10 min" >&2
    exit 1
fi

passed=0
failed=0
proc=""
work=$(mktemp -d /tmp/meshproxy-test-deb.XXXXXX)
chmod 755 "$work"
started=$SECONDS

step() { printf '\n== test-deb: %s (%ds)\n' "$*" "$((SECONDS - started))"; }
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() {
    failed=$((failed + 1))
    echo "FAIL: $*" >&2
    exit 1
}
check() {
    # check DESCRIPTION COMMAND...: the command must succeed.
    local what=$1
    shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}

packageStatus() { dpkg-query -W -f='${db:Status-Status}' meshproxy 2>/dev/null || true; }
packageAbsent() { ! packagePresent; }
packagePresent() {
    local s
    s=$(packageStatus)
    [ -n "$s" ] && [ "$s" != not-installed ]
}

stopProc() {
    # Stop the meshproxy this script started, if it still runs: SIGTERM, then SIGKILL after 10 s.
    if [ -n "$proc" ] && kill -0 "$proc" 2>/dev/null; then
        kill -TERM "$proc" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$proc" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$proc" 2>/dev/null || true
    fi
    if [ -n "$proc" ]; then wait "$proc" 2>/dev/null || true; fi
    proc=""
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stopProc
    if [ -e "$MARKER" ]; then
        if packagePresent; then
            echo "test-deb: purging the test installation" >&2
            "${APT_GET[@]}" purge meshproxy >/dev/null 2>&1
        fi
        rm -f "$MARKER"
    fi
    rm -rf "$work"
    if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
    echo
    echo "test-deb: finished in $((SECONDS - started)) s"
    echo "test-deb: $passed passed, $failed failed"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 0. a meshproxy package already here? ---------------------------------------------------
if packagePresent; then
    if [ -e "$MARKER" ] || [ "${MESHPROXY_TEST_DEB_REPLACE:-}" = 1 ]; then
        echo "test-deb: purging meshproxy left installed (status $(packageStatus))"
        touch "$MARKER"
        "${APT_GET[@]}" purge meshproxy >/dev/null
        rm -f "$MARKER"
    else
        echo "test-deb.sh: a meshproxy package that this script did not install is on this machine" \
            "(status $(packageStatus)); purge it first, or set MESHPROXY_TEST_DEB_REPLACE=1" >&2
        exit 1
    fi
fi

# --- 1. tools and build dependencies ----------------------------------------------------------
step "build dependencies"
tools=(dpkg-dev lintian curl iproute2 util-linux adduser)
missing=()
for p in "${tools[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
updated=""
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    "${APT_GET[@]}" update >/dev/null
    updated=1
    "${APT_GET[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! dpkg-checkbuilddeps "$here/deb/debian/control" 2>/dev/null; then
    echo "installing the build dependencies of packaging/deb/debian/control"
    [ -n "$updated" ] || "${APT_GET[@]}" update >/dev/null
    "${APT_GET[@]}" build-dep --no-install-recommends "$here/deb" >/dev/null
fi
check "build dependencies satisfied" dpkg-checkbuilddeps "$here/deb/debian/control"

# --- 2. build ---------------------------------------------------------------------------------
step "build (packaging/build-deb.sh)"
mkdir -p "$work/out"
if ! TMPDIR=$work "$here/build-deb.sh" "$work/out" >"$work/build.log" 2>&1; then
    tail -n 60 "$work/build.log" >&2
    fail "build-deb.sh failed"
fi
grep -E '^(Ran [0-9]+ tests|PASSED|FAILED)' "$work/build.log" | sed 's/^/build-time unit tests: /' || true
deb=$(tail -n 1 "$work/build.log")
check "built $(basename "$deb")" test -f "$deb"
check "architecture all" test "$(dpkg-deb -f "$deb" Architecture)" = all

# --- 3. lintian -------------------------------------------------------------------------------
step "lintian"
chmod -R a+rX "$work/out"
lintianCmd=(lintian --pedantic --display-info --display-experimental --tag-display-limit 0 "$deb" "$work"/out/*.changes)
if getent passwd nobody >/dev/null; then
    mkdir -p "$work/lintian-home"
    chown nobody "$work/lintian-home"
    lintianCmd=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups
        env HOME="$work/lintian-home" TMPDIR="$work/lintian-home" "${lintianCmd[@]}")
fi
"${lintianCmd[@]}" >"$work/lintian.txt" 2>&1 || true
cat "$work/lintian.txt"
if grep -qE '^[EW]: ' "$work/lintian.txt"; then fail "lintian reports errors or warnings"; fi
ok "lintian: no E: or W:"

# --- 4. install -------------------------------------------------------------------------------
step "install"
touch "$MARKER"
"${APT_GET[@]}" install --no-install-recommends "$deb" >"$work/install.log" 2>&1 \
    || { cat "$work/install.log" >&2; fail "apt-get install $(basename "$deb")"; }
check "package installed" test "$(packageStatus)" = installed
check "meshproxy user and group" sh -c "getent passwd meshproxy >/dev/null && getent group meshproxy >/dev/null"
meshUid=$(id -u meshproxy)
check "meshproxy is a system user (uid $meshUid)" test "$meshUid" -lt 1000
check "meshproxy user has no login shell" test "$(getent passwd meshproxy | cut -d: -f7)" = /usr/sbin/nologin
check "$CONFIG is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' meshproxy | grep -q ' $CONFIG '"
check "/usr/bin/meshproxy installed" test -x /usr/bin/meshproxy
check "man page installed" sh -c 'dpkg -L meshproxy | grep -qx /usr/share/man/man1/meshproxy.1.gz'
check "twistd dropin installed" test -f "$DROPIN"
check "no twisted/__init__.py or twisted/plugins/__init__.py of ours" \
    sh -c '! dpkg -L meshproxy | grep -E "/twisted/(plugins/)?__init__\.py$"'
check "python3-twisted still owns twisted/plugins/__init__.py" \
    sh -c "dpkg -S $PLUGINS/__init__.py | grep -q '^python3-twisted:'"
check "plugin cache rebuilt by the trigger (lists meshproxy_dropin)" grep -aq meshproxy_dropin "$PLUGINS/dropin.cache"
check "meshproxy.service enabled" test -L /etc/systemd/system/multi-user.target.wants/meshproxy.service
check "meshproxy.socket not enabled" test ! -e /etc/systemd/system/sockets.target.wants/meshproxy.socket
check "default config is loopback-only" /usr/bin/python3 - "$CONFIG" <<'EOF'
import ipaddress, sys
from meshproxy.service import loadConfigFile

config = loadConfigFile(sys.argv[1])
endpoints = [listener.endpoint for listener in config.listeners] + [config.admin.endpoint]
for endpoint in endpoints:
    kind, _, rest = endpoint.partition(":")
    if kind in ("tcp", "tcp6"):
        options = dict(p.split("=", 1) for p in rest.split(":")[1:] if "=" in p)
        host = options.get("interface", "").replace("\\:", ":")
        if not host or not ipaddress.ip_address(host).is_loopback:
            sys.exit(f"{endpoint!r} is not on a loopback address")
print("endpoints:", ", ".join(endpoints))
EOF

user=$(sed -n 's/^User=//p' "$UNIT")
group=$(sed -n 's/^Group=//p' "$UNIT")
execStart=$(sed -n 's/^ExecStart=//p' "$UNIT")
caps=$(sed -n 's/^AmbientCapabilities=//p' "$UNIT" | tr 'A-Z ' 'a-z\n' | sed -n 's/^cap_\(.*\)/+\1/p' | paste -sd, -)
check "unit has one ExecStart ($execStart), User=$user, caps $caps" \
    test "$(grep -c '^ExecStart=' "$UNIT")" = 1 -a "$user" = meshproxy -a -n "$caps"
# shellcheck disable=SC2054  # the commas belong to setpriv's capability lists
asService=(setpriv --reuid="$user" --regid="${group:-$user}" --init-groups
    --inh-caps=-all,"$caps" --ambient-caps=-all,"$caps" --bounding-set=-all,"$caps" --no-new-privs
    env -i PATH="$SERVICE_PATH" LANG=C.UTF-8 HOME=/nonexistent USER="$user" LOGNAME="$user")

check "meshproxy check-config $CONFIG (as $user)" "${asService[@]}" /usr/bin/meshproxy check-config "$CONFIG"
check "twistd3 (Debian's twistd) lists the meshproxy plugin (as $user)" \
    sh -c '"$@" /usr/bin/twistd3 --help | grep -q "^ *meshproxy "' sh "${asService[@]}"

if command -v systemd-analyze >/dev/null; then
    # Strict: an unknown or misspelt directive is only a warning to systemd, so any output fails.
    verifyOut=$(systemd-analyze verify --man=no "$UNIT" "$SOCKET_UNIT" 2>&1) || verifyOut="$verifyOut (exit $?)"
    [ -z "$verifyOut" ] || echo "$verifyOut" >&2
    check "systemd-analyze verify meshproxy.service meshproxy.socket: silent" test -z "$verifyOut"
    systemd-analyze security --offline=yes "$UNIT" 2>/dev/null | tail -n 1 || true
else
    echo "skip: systemd-analyze is not installed"
fi

# --- 5. run the installed meshproxy as the service does ---------------------------------------
if unshare --net true 2>/dev/null; then
    netns=1
    echo "running meshproxy in a private network namespace"
else
    netns=""
    echo "no network namespaces here: using the host's loopback"
fi

inNet() {
    # Run a command in meshproxy's network (its namespace, or the host's).
    if [ -n "$netns" ]; then nsenter --net="/proc/$proc/ns/net" "$@"; else "$@"; fi
}

startService() {
    # startService LOG COMMAND...: start COMMAND the way the unit would, in the background.
    local log=$1
    shift
    if [ -n "$netns" ]; then
        unshare --net -- sh -c 'ip link set lo up && cd / && exec "$@"' sh "${asService[@]}" "$@" >"$log" 2>&1 &
        proc=$!
        # Until unshare has run, /proc/$proc/ns/net is still ours: wait for it to change, so that
        # every later nsenter enters meshproxy's namespace.
        local ours
        ours=$(readlink "/proc/$$/ns/net")
        for _ in $(seq 100); do
            [ "$(readlink "/proc/$proc/ns/net" 2>/dev/null)" = "$ours" ] || return 0
            sleep 0.05
        done
        fail "no network namespace of its own after 5 s"
    else
        (cd / && exec "${asService[@]}" "$@") >"$log" 2>&1 &
        proc=$!
    fi
}

waitReady() {
    # waitReady URL LOG: until URL answers "ready" (30 s at most) while the process lives.
    local url=$1 log=$2
    for _ in $(seq 150); do
        if ! kill -0 "$proc" 2>/dev/null; then
            cat "$log" >&2
            fail "meshproxy exited during start-up"
        fi
        if [ "$(inNet curl -s --max-time 2 "$url" 2>/dev/null)" = ready ]; then
            ok "ready: $url"
            return 0
        fi
        sleep 0.2
    done
    cat "$log" >&2
    fail "meshproxy not ready after 30 s"
}

stopAndCheckExit() {
    # SIGTERM drains and must end with exit status 0 (within 40 s: no connections stay open).
    local log=$1 rc=0
    kill -TERM "$proc"
    for _ in $(seq 400); do
        kill -0 "$proc" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$proc" 2>/dev/null; then fail "meshproxy still running 40 s after SIGTERM"; fi
    wait "$proc" || rc=$?
    proc=""
    if [ "$rc" -ne 0 ]; then
        cat "$log" >&2
        fail "exit status $rc after SIGTERM"
    fi
    ok "SIGTERM: exit status 0"
    check "log says it drained on SIGTERM" grep -q "received SIGTERM" "$log"
    if grep -qE "Traceback|Unable to write to plugin cache" "$log"; then
        cat "$log" >&2
        fail "errors in meshproxy's log"
    fi
    ok "no traceback or plugin-cache warning in the log"
}

portFree() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

deriveConfig() {
    # deriveConfig OUT ADDRESS ADMINPORT: the installed config with only its first listener,
    # moved to ADDRESS, and the admin endpoint on 127.0.0.1:ADMINPORT; readable by the service user.
    /usr/bin/python3 - "$CONFIG" "$@" <<'EOF'
import json, sys

source, out, address, adminPort = sys.argv[1:]
with open(source) as f:
    config = json.load(f)
server = config["servers"][0]
server["listeners"] = server["listeners"][:1]
server["listeners"][0]["address"] = address
config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": int(adminPort)}}}
with open(out, "w") as f:
    json.dump(config, f)
EOF
    chmod 644 "$1"
}

sigCaught() {
    # sigCaught NUMBER: whether the running meshproxy has a handler for that signal.
    local mask
    mask=$(awk '/^SigCgt:/ {print $2}' "/proc/$proc/status")
    (( (16#$mask >> ($1 - 1)) & 1 ))
}

step "run the unit's ExecStart as $user on $CONFIG"
if [ -z "$netns" ]; then
    for port in 8080 8081 9901; do
        portFree "$port" || fail "127.0.0.1:$port is taken; the default config needs it"
    done
fi
read -r -a execWords <<<"$execStart"
log=$work/run.log
startService "$log" "${execWords[@]}"
waitReady http://127.0.0.1:9901/ready "$log"
check "runs as $user" test "$(awk '/^Uid:/ {print $2 $3 $4 $5}' "/proc/$proc/status")" = "$meshUid$meshUid$meshUid$meshUid"
check "ambient capabilities are CAP_NET_BIND_SERVICE only" \
    test "$(awk '/^CapAmb:/ {print $2}' "/proc/$proc/status")" = 0000000000000400
check "NoNewPrivs" test "$(awk '/^NoNewPrivs:/ {print $2}' "/proc/$proc/status")" = 1
body=$(inNet curl -sS --max-time 5 http://127.0.0.1:8080/)
check "demo listener answers on 127.0.0.1:8080" grep -q "meshproxy is running" <<<"$body"
check "HTTP proxy to the admin /ready" test "$(inNet curl -sS --max-time 5 http://127.0.0.1:8080/admin/ready)" = ready
check "L4 relay to the admin /ready" test "$(inNet curl -sS --max-time 5 http://127.0.0.1:8081/ready)" = ready
# Reload and log reopening, once meshproxy handles them; until then the unit's ExecReload (SIGHUP)
# and a SIGUSR1 would end the process, which is what these lines warn about.
if sigCaught 1; then
    kill -HUP "$proc"
    sleep 1
    check "SIGHUP (reload) keeps meshproxy running" kill -0 "$proc"
    waitReady http://127.0.0.1:9901/ready "$log"
    check "demo listener answers after SIGHUP" grep -q "meshproxy is running" \
        <<<"$(inNet curl -sS --max-time 5 http://127.0.0.1:8080/)"
else
    echo "WARNING: meshproxy does not handle SIGHUP yet: 'systemctl reload meshproxy' would stop it" >&2
fi
if sigCaught 10; then
    kill -USR1 "$proc"
    sleep 1
    check "SIGUSR1 (reopen logs) keeps meshproxy running" kill -0 "$proc"
    waitReady http://127.0.0.1:9901/ready "$log"
else
    echo "WARNING: meshproxy does not handle SIGUSR1 yet: a SIGUSR1 would stop it" >&2
fi
stopAndCheckExit "$log"

step "a port below 1024 as $user (CAP_NET_BIND_SERVICE)"
lowPort=80
if [ -z "$netns" ]; then
    lowPort=""
    for p in 80 81 88 808 888 999; do
        if portFree "$p" && portFree $((p + 9000)); then lowPort=$p; break; fi
    done
    [ -n "$lowPort" ] || fail "no free port below 1024 to try"
fi
deriveConfig "$work/lowport.json" "127.0.0.1:$lowPort" $((lowPort + 9000))
log=$work/run-lowport.log
startService "$log" "${execWords[@]/#$CONFIG/$work/lowport.json}"
waitReady "http://127.0.0.1:$((lowPort + 9000))/ready" "$log"
body=$(inNet curl -sS --max-time 5 "http://127.0.0.1:$lowPort/")
check "listener on 127.0.0.1:$lowPort answers" grep -q "meshproxy is running" <<<"$body"
stopAndCheckExit "$log"

step "socket activation: meshproxy.socket's address, systemd:domain=INET:index=0"
# systemd-socket-activate stands in for systemd: it binds the socket unit's ListenStream= address,
# waits for the first connection, then execs the service command with LISTEN_FDS/LISTEN_PID set.
listen=$(sed -n 's/^ListenStream=//p' "$SOCKET_UNIT")
check "meshproxy.socket has one ListenStream= ($listen)" test "$(wc -l <<<"$listen")" = 1 -a -n "$listen"
if command -v systemd-socket-activate >/dev/null; then
    deriveConfig "$work/socket.json" "systemd:domain=INET:index=0" 9901
    log=$work/run-socket.log
    startService "$log" systemd-socket-activate -l "$listen" "${execWords[@]/#$CONFIG/$work/socket.json}"
    # This first request is what starts meshproxy; it waits in the socket's backlog meanwhile.
    body=$(inNet curl -sS --max-time 30 --retry 20 --retry-connrefused --retry-delay 1 "http://$listen/") \
        || cat "$log" >&2
    check "socket-activated listener on $listen answers" grep -q "meshproxy is running" <<<"$body"
    waitReady http://127.0.0.1:9901/ready "$log"
    stopAndCheckExit "$log"
else
    echo "skip: systemd-socket-activate is not installed"
fi

# --- 6. remove, then purge --------------------------------------------------------------------
step "remove"
"${APT_GET[@]}" remove meshproxy >"$work/remove.log" 2>&1 || { cat "$work/remove.log" >&2; fail "apt-get remove"; }
check "package removed, config-files left" test "$(packageStatus)" = config-files
check "dropin removed" test ! -e "$DROPIN"
check "plugin cache no longer lists meshproxy_dropin" \
    sh -c "! grep -aq meshproxy_dropin $PLUGINS/dropin.cache 2>/dev/null"
check "/usr/bin/meshproxy removed" test ! -e /usr/bin/meshproxy
check "no meshproxy module left" test ! -e /usr/lib/python3/dist-packages/meshproxy
check "remove keeps $CONFIG" test -f "$CONFIG"
check "remove keeps the meshproxy user" sh -c "getent passwd meshproxy >/dev/null"

step "purge"
"${APT_GET[@]}" purge meshproxy >"$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail "apt-get purge"; }
rm -f "$MARKER"
check "package purged" packageAbsent
check "user gone" sh -c '! getent passwd meshproxy >/dev/null'
check "group gone" sh -c '! getent group meshproxy >/dev/null'
check "$CONFIG gone" test ! -e "$CONFIG"
check "no $CONFIG.dpkg-* left" sh -c "! ls $CONFIG.dpkg-* 2>/dev/null"
check "/var/log/meshproxy gone" test ! -e /var/log/meshproxy
check "unit symlinks gone" test ! -e /etc/systemd/system/multi-user.target.wants/meshproxy.service
check "dropin gone" test ! -e "$DROPIN"
check "plugin cache does not list meshproxy_dropin" \
    sh -c "! grep -aq meshproxy_dropin $PLUGINS/dropin.cache 2>/dev/null"
