# Two commands on a fresh machine:  `make demo` (set up + main job)  and  `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ITKD   := $(VENV)/bin/itkd
OUT    ?= runs/demo
# Official Waymo metrics: waymo-open-dataset pins tensorflow 2.13 / typing_extensions 4.5, which break
# torch and pydantic, so it gets a venv of its own that `itkd eval --dataset waymo` calls as a process.
WAYMO_VENV ?= .venv-waymo
WAYMO_PKG  := waymo-open-dataset-tf-2-12-0==1.6.7

.PHONY: setup waymo-env demo test test-slow clean

# One pip resolve for everything: nuscenes-devkit needs numpy<2, and a later install could upgrade it.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu,test]"
	touch $@

setup: $(VENV)/.installed

$(WAYMO_VENV)/.installed:
	$(PYTHON) -m venv $(WAYMO_VENV)
	$(WAYMO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(WAYMO_VENV)/bin/python -m pip install --quiet "$(WAYMO_PKG)"
	touch $@

waymo-env: $(WAYMO_VENV)/.installed

demo: setup
	$(ITKD) demo --out $(OUT)

test: setup waymo-env
	ITKD_WAYMO_PYTHON=$(abspath $(WAYMO_VENV))/bin/python $(PY) -m pytest -q

test-slow: setup waymo-env
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) $(WAYMO_VENV) runs
