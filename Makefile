# meshproxy: the two commands are `make run` and `make test` (see README.md).
# Both work on a fresh Debian bookworm machine as root: missing system packages are installed with apt-get.

PYTHON ?= python3
VENV ?= .venv
CONFIG ?= etc/meshproxy.json
# Debian's own interpreter, for the run against bookworm's python3-twisted (22.4).
DEBIAN_PYTHON ?= /usr/bin/python3
TRIAL_ARGS ?= tests
APT_GET = DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0

# System packages the test suite drives for real, and bookworm's own Python libraries for the 22.4 run.
TEST_DEBS = curl openssl nats-server python3-venv python3-twisted python3-openssl python3-service-identity \
	python3-zope.interface python3-treq python3-attr python3-hypothesis python3-cryptography python3-websockets

.PHONY: run test check venv venv-test deps-system test-newest test-debian typecheck test-deb bench clean

run: $(VENV)/.installed
	$(VENV)/bin/twistd --nodaemon --pidfile= meshproxy --config $(CONFIG)

test: deps-system venv-test test-newest test-debian typecheck test-deb

# Installs only what is missing, so a machine that has everything needs no network.
deps-system:
	@missing=""; for p in $(TEST_DEBS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(APT_GET) update >/dev/null && $(APT_GET) install --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || { $(APT_GET) update >/dev/null && $(APT_GET) install python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/pip install -q --upgrade pip

# Editable installs use compat mode (a .pth with the source root): Twisted finds plugins by scanning
# sys.path for twisted/plugins folders, which the newer import-hook editable mode hides.
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(VENV)/bin/pip install -q -e . --config-settings editable_mode=compat
	touch $@

$(VENV)/.installed-test: $(VENV)/bin/python pyproject.toml
	$(VENV)/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(VENV)/.installed $@

venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

# The whole suite on the newest releases from PyPI.
test-newest: venv-test
	$(VENV)/bin/python --version
	$(VENV)/bin/python -c 'import twisted; print("twisted", twisted.__version__)'
	$(VENV)/bin/python -m twisted.trial $(TRIAL_ARGS)

# The whole suite again on Debian bookworm's own packages (Twisted 22.4), from the source tree.
test-debian: deps-system
	$(DEBIAN_PYTHON) -c 'import twisted; print("twisted", twisted.__version__, "(Debian)")'
	PYTHONPATH=$(CURDIR) $(DEBIAN_PYTHON) -m twisted.trial --temp-directory=_trial_temp.debian $(TRIAL_ARGS)

typecheck: venv-test
	$(VENV)/bin/mypy

# The Debian package end to end (needs root; about 40 s): build with the unit tests on Debian's
# Twisted, lintian, install, run as the service user, stop, purge.  Installs its build tools.
test-deb:
	packaging/test-deb.sh

bench: venv
	$(VENV)/bin/python bench/run.py --mode tcp

clean:
	rm -rf $(VENV) _trial_temp* .mypy_cache build *.egg-info twisted/plugins/dropin.cache
