# Two commands on a fresh machine:  `make demo` (set up + main job)  and  `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ITKD   := $(VENV)/bin/itkd
OUT    ?= runs/demo

.PHONY: setup demo test test-slow clean

# One pip resolve for everything: nuscenes-devkit needs numpy<2, and a later install could upgrade it.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(ITKD) demo --out $(OUT)

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
