# The two commands of the README:
#   make run    set everything up and run the gateway on 127.0.0.1:8080 with the shipped rules and embedded audit
#   make test   set everything up with the test extras and run the whole test suite
.PHONY: run test bench

DATA ?= $(CURDIR)/data
# Test processes (pytest-xdist): most of the suite waits on gateways starting and answering, so two processes on
# two cores finish in about two thirds of the time of one. A test module stays in one process (its gateway too).
TEST_WORKERS ?= 2

run:
	./scripts/bootstrap.sh
	.venv/bin/gateway run --data-dir "$(DATA)"

test:
	./scripts/bootstrap.sh test
	.venv/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench:
	./scripts/bootstrap.sh test
	.venv/bin/python bench/proxy.py
	.venv/bin/python bench/stream.py
	.venv/bin/python bench/stream.py --prompt pii
	.venv/bin/python bench/stream.py --prompt token
	.venv/bin/python bench/bigbody.py
	.venv/bin/python bench/audit.py
	.venv/bin/python bench/dlp.py
	.venv/bin/python bench/conversation.py
