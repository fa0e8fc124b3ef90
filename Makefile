# chatstack — the two commands: `make up` (the stack on a local sandbox host, ending with a chat
# answer) and `make test` (everything). Both run as root on a fresh Debian 12 / Ubuntu machine.
SHELL := /bin/bash
ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
# promtool/amtool for `make test` (alert rule unit tests, Alertmanager config check), unpacked from
# Debian's packages (apt-get download) so that no Prometheus service starts on this machine.
TOOLS := $(ROOT)/.cache/tools
export PATH := $(VENV)/bin:$(TOOLS)/bin:$(PATH)
export ANSIBLE_CONFIG := $(ROOT)/ansible.cfg
export ANSIBLE_ROLES_PATH := $(ROOT)/roles
# Molecule writes its own ansible.cfg: the roles call the filter plugins by FQCN
# (chatstack.stack.<filter>), which the checkout resolves through collections/ansible_collections/
# chatstack/stack, a link to this directory (ansible.cfg's collections_path for plain runs).
export ANSIBLE_COLLECTIONS_PATH := $(ROOT)/collections
export ANSIBLE_FORCE_COLOR := 0
# `make up` converges with mitogen's strategy (scripts/up.py); `make up FAST=0` with the built-in one.
export PY_COLORS := 0

# Controller packages: test hosts (nspawn, debootstrap, nft), the venv, the web chat's browser check
# (chromium, its driver, a CJK font for readable screenshots) and what the service tests start
# (service/requirements-apt.txt); wrk for the bench scripts.
APT_PACKAGES := python3 python3-venv git make curl openssl systemd-container debootstrap \
	nftables openssh-client iproute2 chromium chromium-driver fonts-wqy-microhei wrk \
	$(shell cat service/requirements-apt.txt 2>/dev/null)
SCENARIOS := $(shell ls -d molecule/*/molecule.yml 2>/dev/null | cut -d/ -f2)
# The steps of `make test` (lint, syntax, service, scenarios) live in scripts/test.py.

.PHONY: help deps apt venv tools up down test test-fast molecule clean

help:
	@echo "make up        bring up the whole stack on a local sandbox host and show a chat answer"
	@echo "make down      remove the sandbox hosts"
	@echo "make test      lint, syntax, service tests, every molecule scenario (one summary line)"
	@echo "make test-fast the same without molecule"
	@echo "make molecule S=<scenario>   one scenario: $(SCENARIOS)"

deps: apt venv tools

apt:
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null \
		| awk '$$NF != "installed" {print $$1}'; \
		for p in $(APT_PACKAGES); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing $$(echo $$missing | tr '\n' ' ')"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(VENV)/.stamp

$(VENV)/.stamp: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	ln -sfn "$$($(VENV)/bin/python -c 'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))')/plugins/strategy" $(VENV)/mitogen-strategy
	touch $@

tools: $(TOOLS)/.stamp

$(TOOLS)/.stamp:
	rm -rf $(TOOLS) && mkdir -p $(TOOLS)/debs $(TOOLS)/bin
	cd $(TOOLS)/debs && { apt-get download -q prometheus prometheus-alertmanager 2>/dev/null \
		|| { apt-get update -qq && apt-get download -q prometheus prometheus-alertmanager 2>/dev/null; }; }
	for deb in $(TOOLS)/debs/*.deb; do dpkg-deb -x $$deb $(TOOLS)/root; done
	cp $(TOOLS)/root/usr/bin/promtool $(TOOLS)/root/usr/bin/amtool $(TOOLS)/bin/
	rm -rf $(TOOLS)/debs $(TOOLS)/root
	touch $@

up: deps
	$(VENV)/bin/python scripts/up.py up

down: venv
	$(VENV)/bin/python scripts/up.py down

test: deps
	$(VENV)/bin/python scripts/test.py --molecule

test-fast: deps
	$(VENV)/bin/python scripts/test.py

molecule: deps
	cd $(ROOT) && flock /tmp/chatstack-molecule-$(S).lock molecule test -s $(S)

clean: down
	rm -rf $(ROOT)/.cache
