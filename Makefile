# The two commands of the README: `make serve` and `make test`. Everything else is a step of those.
PY ?= python3
VENV := .venv
LSVENV := .lsvenv
HOST ?= 127.0.0.1
PORT ?= 9090
TORCH ?= 2.13.0

.PHONY: install lsvenv redis serve test lint bench

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==$(TORCH)
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed

# Label Studio in its own virtualenv (it pins its own Django, redis and rq): used by the e2e tests
$(LSVENV)/.installed:
	$(PY) -m venv $(LSVENV)
	$(LSVENV)/bin/pip install -q label-studio==1.23.2
	touch $@

lsvenv: $(LSVENV)/.installed

# a Redis on 127.0.0.1:6379 for the RQ training queue, started when nothing listens there; the redis-server binary
# is installed in any case (the Redis-down test starts and stops one of its own)
redis:
	@command -v redis-server >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server)
	@if $(PY) -c "import socket; socket.create_connection(('127.0.0.1', 6379), 1)" 2>/dev/null; then \
		echo "redis: already listening on 127.0.0.1:6379"; \
	else \
		redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; \
		sleep 1; \
	fi

serve: install redis
	$(VENV)/bin/kpassist serve --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check .

test: install lsvenv redis lint
	KPASSIST_LS_VENV=$(abspath $(LSVENV)) $(VENV)/bin/python -m pytest -m "" tests

# the README's figures: the 20-frame fine-tune (its checkpoint feeds the kptllm column), the retraining curve, then
# memory with 50 projects, then accuracy (all pairs) + HTTP speed + memory + scale + 60 s load test (needs the LS venv)
bench: install lsvenv redis
	$(VENV)/bin/kpassist bench finetune --save-checkpoint --out bench-out/finetune.json
	$(VENV)/bin/kpassist bench loop --out bench-out/loop.json
	$(VENV)/bin/kpassist bench models --out bench-out/models.json
	KPASSIST_LS_VENV=$(abspath $(LSVENV)) $(VENV)/bin/kpassist bench all --kptllm-checkpoint bench-out/finetune-checkpoint --out bench-out/report.json
