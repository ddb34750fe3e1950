# make demo: the embedded digits benchmark end to end, ending with the report.
# make test: the test suite. Both create .venv with plain pip and install the project first.
# make docs: the documentation site (mkdocs build --strict into build/site/), the docs extra installed into .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
IMOOD := $(VENV)/bin/imood
STAMP := $(VENV)/.imood-installed
DOCS_STAMP := $(VENV)/.imood-docs-installed
RUNS ?= runs
DATA ?= data
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-slow lint docs clean

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q -e ./plugins/imood-extras
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(IMOOD) data prepare digits --drp $(DATA)
	$(IMOOD) train --ds digits --drp $(DATA) --srp $(RUNS) --name digits-baseline --force \
	    --ood-metric oe --logit-adjust 0 --aux-ood-loss none
	$(IMOOD) train --ds digits --drp $(DATA) --srp $(RUNS) --name digits-imood --force \
	    --ood-metric ada_oe --logit-adjust 1.0 --aux-ood-loss none
	$(IMOOD) score $(RUNS)/digits-baseline --ood-metric all
	$(IMOOD) score $(RUNS)/digits-imood --ood-metric msp,energy
	$(IMOOD) eval $(RUNS)/digits-imood/scores/msp.safetensors
	$(IMOOD) report $(RUNS)/digits-baseline $(RUNS)/digits-imood

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

test: $(STAMP)
	$(PY) -m pytest -q
	$(PY) -m pytest -q plugins/imood-extras/tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(RUNS) .pytest_cache
