#!/bin/bash
# Build meshproxy's Debian package (meshproxy_VERSION_all.deb) from a clean copy of the tree.
#
#   packaging/build-deb.sh [OUTDIR]        # default OUTDIR: dist/ at the top of the tree
#
# The copy holds the files git knows or would add (tracked plus untracked-but-not-ignored, as they
# are in the work tree), so .venv, _trial_temp*, caches and dropin.cache never reach the build.
# packaging/deb/debian becomes the copy's ./debian, as dpkg-buildpackage wants. The build runs the
# unit tests (tests/ without tests/integration) against Debian's own Twisted; DEB_BUILD_OPTIONS=nocheck
# skips them. Build dependencies must be installed (packaging/test-deb.sh installs them; or
# `apt-get build-dep ./packaging/deb` as root). Needs no root itself.
# Prints the path of the .deb as its last line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
outdir=${1:-$root/dist}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/meshproxy-build-deb.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

src=$work/meshproxy
mkdir -p "$src"

# The clean copy.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$root" ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do
            # a tracked file deleted in the work tree is left out, as the next commit would
            if [ -e "$root/$f" ] || [ -L "$root/$f" ]; then printf '%s\0' "$f"; fi
        done \
        | tar -C "$root" --null -T - -cf - \
        | tar -C "$src" -xf -
else
    tar -C "$root" -cf - \
        --exclude=.git --exclude=.venv --exclude='.venv-*' --exclude='_trial_temp*' \
        --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' --exclude=.mypy_cache \
        --exclude=.ruff_cache --exclude=.hypothesis --exclude=build --exclude=dist \
        --exclude=dropin.cache --exclude=debian . \
        | tar -C "$src" -xf -
fi
rm -rf "$src/debian"
cp -a "$root/packaging/deb/debian" "$src/debian"

# One version: the changelog's must be pyproject.toml's (a native package has no Debian revision).
debVersion=$(cd "$src" && dpkg-parsechangelog -S Version)
pyVersion=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$src/pyproject.toml" | head -n 1)
if [ "$debVersion" != "$pyVersion" ]; then
    echo "build-deb.sh: packaging/deb/debian/changelog says $debVersion but pyproject.toml says $pyVersion;" \
        "add a changelog entry (dch -v $pyVersion) first" >&2
    exit 1
fi

echo "build-deb.sh: building meshproxy $debVersion in $src" >&2
# Debian's own interpreter and tools only: a pyenv shim or a virtualenv first on PATH would
# otherwise answer for python3.11.
(cd "$src" && env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV -u PYENV_VERSION \
    PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage --build=all --no-sign)

deb=$work/meshproxy_${debVersion}_all.deb
test -f "$deb"
cp "$deb" "$work"/meshproxy_"${debVersion}"_*.changes "$work"/meshproxy_"${debVersion}"_*.buildinfo "$outdir"/
echo "$outdir/meshproxy_${debVersion}_all.deb"
