# flannelette: `make demo` runs a 3-node cluster in network namespaces, `make test` runs every test tier:
# tests/unit as the unprivileged user nobody first (tests/unprivileged.sh), then the root tiers.
.PHONY: setup test unit demo demo-down bench bench-quick build install clean

setup:
	bash packaging/dev-setup.sh

test: setup
	bash tests/unprivileged.sh tests/unit
	.venv/bin/python -m pytest -q -p no:cacheprovider tests --ignore=tests/unit

unit: setup
	bash tests/unprivileged.sh tests/unit

demo: setup
	.venv/bin/python -m tests.e2e.demo up

demo-down:
	.venv/bin/python -m tests.e2e.demo down

bench: setup
	.venv/bin/python -m tests.bench

bench-quick: setup
	.venv/bin/python -m tests.bench --quick

build: setup
	.venv/bin/python packaging/build.py

install: build
	.venv/bin/python packaging/install.py

clean:
	rm -rf build dist .venv
