# vgssl — the two commands of the quick start are `make demo` and `make test`; both install
# what they need first (`make setup`, idempotent: a stamp file skips work when nothing changed).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vgssl-setup
# The project's shared folder, a sibling of the checkout; its ros2-launch/ holds the ROS 2 launch
# stack (launch, launch_testing, the ros2 command), which is not on PyPI. Without it the launch
# tests skip. From a git worktree elsewhere: make SHARED=/path/to/shared (tests read VGSSL_SHARED).
SHARED ?= ../shared
export VGSSL_SHARED := $(abspath $(SHARED))
LAUNCH_STACK := $(SHARED)/ros2-launch/install.sh
# Every ROS process we start stays on this machine and in its own domain.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_localhost.xml
ROS_SOURCES := $(shell find vgssl_msgs vgssl_ros -type f \( -name '*.msg' -o -name '*.srv' -o -name 'CMakeLists.txt' -o -name 'package.xml' -o -name 'setup.py' -o -name 'setup.cfg' \) 2>/dev/null)

.PHONY: setup demo demo-robot test test-core test-ros bench clean

# The launch stack's install.sh is a no-op when it is installed already (a stamp of its own),
# and runs here, outside the stamp, so that a ../shared that appears later is picked up.
setup: $(STAMP)
	@if [ -f "$(LAUNCH_STACK)" ]; then bash "$(LAUNCH_STACK)" $(VENV); \
	else echo "setup: $(SHARED)/ros2-launch not found: ros2 launch and launch_testing not installed (launch tests skip)"; fi

$(STAMP): requirements.txt requirements-ros.txt vgssl_core/pyproject.toml $(ROS_SOURCES) $(wildcard tools/ros_setup.sh)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	set -o pipefail; $(PY) -m pip install -q -r requirements.txt -r requirements-ros.txt 2>&1 | { grep -v '^WARNING: Location' || true; }
	set -o pipefail; $(PY) -m pip install -q --no-deps --config-settings editable_mode=compat -e vgssl_core 2>&1 | { grep -v '^WARNING: Location' || true; }
	@if [ -f tools/ros_setup.sh ]; then bash tools/ros_setup.sh $(VENV); fi
	@touch $(STAMP)
	@echo "setup: $(VENV) is ready"

demo: setup
	$(VENV)/bin/vgssl demo --out runs/demo

demo-robot: setup
	$(VENV)/bin/vgssl demo --robot --out runs/demo

test: setup
	$(VENV)/bin/pytest -q tests

test-core: setup
	$(VENV)/bin/pytest -q tests/core

test-ros: setup
	$(VENV)/bin/pytest -q tests/ros

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
	$(PY) benchmarks/summary.py

clean:
	rm -rf build install log runs .pytest_cache
