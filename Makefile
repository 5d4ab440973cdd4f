# The project's verbs. The README's two commands are `make test` and `make figures`.
#
#   make test                  venv + pinned install, unit tests, every notebook under papermill on smoke parameters
#   make nbval                 the same notebooks cell by cell under nbval (CI runs it after make test)
#   make numerics              the CPU-kernel-sensitive tests alone (CI reruns them under another ATEN_CPU_CAPABILITY)
#   make assets                fetch and prepare the offline models, corpora and gold reward
#   make figures [PROFILE=cpu] the IMDb experiment end to end: results/<profile>/ and figures/
#   make study [PROFILE=cpu]   the extensions: lr probe, optimizer control, data scaling: figures/STUDY.md
#   make judge-assets          the local judge's runtime and model, and real text for the other tasks (34 MB + 1.1 GB + 38 MB)
#   make judge [PROFILE=cpu]   the local judge against the gold classifier, and the win rates by both: figures/JUDGE.md
#   make bench                 dpo_core against TRL and model.generate, the levers, step time vs length: bench/
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

.PHONY: install test unit numerics nbval judge-runtime assets judge-assets figures study judge bench lab clean distclean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

install: $(VENV)/.installed

# `unit` already executes every notebook and exercise under papermill with its smoke parameters,
# asserts included (tests/test_notebooks.py, tests/test_exercises.py); nbval runs the same cells
# again, so it is CI's second check (.ci/run), not part of the README's command.
test: unit

# llama.cpp's CPU runtime (34 MB from PyPI the first time, hash-checked, cached): the local judge's
# tests and notebook 14's smoke run use it with a 0.1 MB model written on the spot.
judge-runtime: install
	@$(PY) -m dpo_core.prepare xllamacpp

unit: install judge-runtime
	$(PY) -m pytest tests --durations=25

# The tests whose numbers depend on the CPU's kernels (losses, log-probs, bf16, the reward model,
# frozen, PPO, sampling, training). CI runs them a second time under another kernel set
# (ATEN_CPU_CAPABILITY=avx2 or default) to catch a threshold that only this CPU's rounding meets.
NUMERICS := losses logprobs precision reward_model reward frozen ppo sampling_evaluate train determinism objective
numerics: install
	$(PY) -m pytest $(NUMERICS:%=tests/test_%.py) -q

# nbval cannot inject parameters: papermill --prepare-only writes each notebook with its
# smoke parameters (one copy per run of a sweep), then nbval runs them cell by cell, in name
# order, which is the order of the experiment (lax: errors and asserts, not outputs). The
# exercise notebooks follow, each with its smoke parameters: every stub filled with its solution.
nbval: install judge-runtime
	@rm -rf build/nbval build/smoke && mkdir -p build/nbval
	@for stem in $(STEMS); do \
	  if [ -f params/smoke/$$stem.yaml ]; then files=params/smoke/$$stem.yaml; else files="$$(ls params/smoke/$$stem/*.yaml)"; fi; \
	  for f in $$files; do \
	    $(PY) -m papermill --prepare-only -k python3 notebooks/$$stem.ipynb \
	      build/nbval/$$stem-$$(basename $$f .yaml).ipynb -f $$f || exit 1; \
	  done; \
	done
	@for nb in notebooks/exercises/ex[0-9][0-9]_*.ipynb; do \
	  stem=$$(basename $$nb .ipynb); \
	  $(PY) -m papermill --prepare-only -k python3 $$nb build/nbval/exercises-$$stem.ipynb \
	    -f params/smoke/exercises/$$stem.yaml || exit 1; \
	done
	$(PY) -m pytest --nbval-lax --nbval-current-env --nbval-kernel-startup-timeout 180 build/nbval

# Everything the cpu profile needs, cached in $$DPO_CACHE_DIR (default ~/.cache/dpo_core).
# Downloads from PyPI, so it is the one step that needs the registry; a second run does nothing.
assets: install
	$(PY) -m dpo_core.prepare

# A parameter's value as a params file sets it (empty where it does not): $(call PARAM,<file>,<name>).
PARAM = $(shell sed -n 's/^$(2): *\([^ #]*\).*/\1/p' $(1))

# The IMDb experiment as a graph of runs. Each run is one papermill execution writing into its
# own directory and a FINISHED marker last: a finished run is not run again, a changed notebook
# or parameter file reruns it and what depends on it, and `make -j` runs the sweep in parallel.
R     := results/$(PROFILE)
SWEEP := $(basename $(notdir $(wildcard params/$(PROFILE)/04_imdb_dpo_and_baselines/*.yaml)))
PPO   := $(basename $(notdir $(wildcard params/$(PROFILE)/06_imdb_ppo/*.yaml)))
WINS  := $(basename $(notdir $(wildcard params/$(PROFILE)/09_imdb_win_rates/*.yaml)))
# A profile leaves a stage out by having no parameter file for it (quick: no learned reward model,
# Best-of-N or win rates): the same graph, fewer nodes.
RM    := $(if $(wildcard params/$(PROFILE)/05_imdb_reward_model.yaml),$(R)/05_imdb_reward_model/main/FINISHED)
BON   := $(if $(wildcard params/$(PROFILE)/07_imdb_best_of_n.yaml),$(R)/07_imdb_best_of_n/main/FINISHED)
RUNS  := $(words 02 03 $(SWEEP) $(RM) $(PPO) $(BON) $(WINS))
# Says which stage starts and how many of the graph's runs are finished before it.
STAGE  = echo "[figures] $(1) $(notdir $(@D)): starting; $$(find $(R) -name FINISHED 2>/dev/null | wc -l) of $(RUNS) runs finished"
RUN    = $(call STAGE,$(1)) && mkdir -p $(@D) && $(PM) notebooks/$(1).ipynb $(@D)/executed.ipynb -f $(2) -p profile $(PROFILE) -p results_root results
FIGURE := $(R)/08_fig_reward_kl_frontier/main/executed.ipynb
WINFIG := $(if $(WINS),$(R)/10_fig_win_rates/main/executed.ipynb)

# TL;DR and Anthropic-HH (notebooks 11, 12) need the hub and a judge: only the paper profile runs them.
TASKS  := $(if $(filter paper,$(PROFILE)),$(R)/11_tldr_dpo/dpo_beta-0.5/FINISHED $(R)/12_hh_dpo/dpo_beta-0.1/FINISHED)

figures: assets $(R)/01_dpo_loss_walkthrough/main/executed.ipynb $(FIGURE) $(WINFIG) $(TASKS)
	@echo "Figures are in $(or $(call PARAM,params/$(PROFILE)/08_fig_reward_kl_frontier.yaml,fig_dir),figures)/; runs in $(R)/."

$(R)/01_dpo_loss_walkthrough/main/executed.ipynb: notebooks/01_dpo_loss_walkthrough.ipynb params/$(PROFILE)/01_dpo_loss_walkthrough.yaml | install
	@mkdir -p $(@D)
	$(PM) $< $(@D)/executing.ipynb -f params/$(PROFILE)/01_dpo_loss_walkthrough.yaml
	mv $(@D)/executing.ipynb $@

$(R)/02_imdb_sft/main/FINISHED: notebooks/02_imdb_sft.ipynb params/$(PROFILE)/02_imdb_sft.yaml | assets
	$(call RUN,02_imdb_sft,params/$(PROFILE)/02_imdb_sft.yaml)

$(R)/03_imdb_preferences/main/FINISHED: notebooks/03_imdb_preferences.ipynb params/$(PROFILE)/03_imdb_preferences.yaml \
		$(R)/02_imdb_sft/main/FINISHED
	$(call RUN,03_imdb_preferences,params/$(PROFILE)/03_imdb_preferences.yaml)

$(R)/04_imdb_dpo_and_baselines/%/FINISHED: notebooks/04_imdb_dpo_and_baselines.ipynb \
		params/$(PROFILE)/04_imdb_dpo_and_baselines/%.yaml $(R)/03_imdb_preferences/main/FINISHED
	$(call RUN,04_imdb_dpo_and_baselines,params/$(PROFILE)/04_imdb_dpo_and_baselines/$*.yaml)

$(R)/05_imdb_reward_model/main/FINISHED: notebooks/05_imdb_reward_model.ipynb params/$(PROFILE)/05_imdb_reward_model.yaml \
		$(R)/03_imdb_preferences/main/FINISHED
	$(call RUN,05_imdb_reward_model,params/$(PROFILE)/05_imdb_reward_model.yaml)

$(R)/06_imdb_ppo/%/FINISHED: notebooks/06_imdb_ppo.ipynb params/$(PROFILE)/06_imdb_ppo/%.yaml \
		$(R)/03_imdb_preferences/main/FINISHED $(RM)
	$(call RUN,06_imdb_ppo,params/$(PROFILE)/06_imdb_ppo/$*.yaml)

$(R)/07_imdb_best_of_n/main/FINISHED: notebooks/07_imdb_best_of_n.ipynb params/$(PROFILE)/07_imdb_best_of_n.yaml \
		$(R)/05_imdb_reward_model/main/FINISHED
	$(call RUN,07_imdb_best_of_n,params/$(PROFILE)/07_imdb_best_of_n.yaml)

$(FIGURE): notebooks/08_fig_reward_kl_frontier.ipynb params/$(PROFILE)/08_fig_reward_kl_frontier.yaml \
		$(SWEEP:%=$(R)/04_imdb_dpo_and_baselines/%/FINISHED) $(PPO:%=$(R)/06_imdb_ppo/%/FINISHED) $(BON)
	@mkdir -p $(@D)
	$(PM) $< $(@D)/executing.ipynb -f params/$(PROFILE)/08_fig_reward_kl_frontier.yaml -p profile $(PROFILE) -p results_root results
	mv $(@D)/executing.ipynb $@

# Win rates need the trained policies (04, 06) and the reward model (Best-of-N).
$(R)/09_imdb_win_rates/%/FINISHED: notebooks/09_imdb_win_rates.ipynb params/$(PROFILE)/09_imdb_win_rates/%.yaml \
		$(SWEEP:%=$(R)/04_imdb_dpo_and_baselines/%/FINISHED) $(PPO:%=$(R)/06_imdb_ppo/%/FINISHED)
	$(call RUN,09_imdb_win_rates,params/$(PROFILE)/09_imdb_win_rates/$*.yaml)

# After the frontier figure: both write figures/README.md, 10 only its own section.
$(WINFIG): notebooks/10_fig_win_rates.ipynb params/$(PROFILE)/10_fig_win_rates.yaml \
		$(WINS:%=$(R)/09_imdb_win_rates/%/FINISHED) $(FIGURE)
	@mkdir -p $(@D)
	$(PM) $< $(@D)/executing.ipynb -f params/$(PROFILE)/10_fig_win_rates.yaml -p profile $(PROFILE) -p results_root results
	mv $(@D)/executing.ipynb $@

$(R)/11_tldr_dpo/%/FINISHED: notebooks/11_tldr_dpo.ipynb params/$(PROFILE)/11_tldr_dpo.yaml | install
	$(call RUN,11_tldr_dpo,params/$(PROFILE)/11_tldr_dpo.yaml) -p run_name $*

$(R)/12_hh_dpo/%/FINISHED: notebooks/12_hh_dpo.ipynb params/$(PROFILE)/12_hh_dpo.yaml | install
	$(call RUN,12_hh_dpo,params/$(PROFILE)/12_hh_dpo.yaml) -p run_name $*

# The fair frontier's extensions (notebook 13): every run of params/<profile>/study/<notebook>/<run>.yaml,
# the same notebooks 03, 04 and 06 writing into their own tree results/<profile>-study/ (the frontier
# figure never sees them), on the figure's SFT and pairs (linked, not rerun); then notebook 13 writes
# figures/STUDY.md and figures/dpo_vs_preference_data.{png,pdf}. Its pairs may name the figure's own runs.
S     := results/$(PROFILE)-study
SP    := params/$(PROFILE)/study
SR    := $(S)/$(PROFILE)
S03   := $(basename $(notdir $(wildcard $(SP)/03_imdb_preferences/*.yaml)))
S04   := $(basename $(notdir $(wildcard $(SP)/04_imdb_dpo_and_baselines/*.yaml)))
S05   := $(basename $(notdir $(wildcard $(SP)/05_imdb_reward_model/*.yaml)))
S06   := $(basename $(notdir $(wildcard $(SP)/06_imdb_ppo/*.yaml)))
SRUNS := $(words $(S03) $(S04) $(S05) $(S06))
SRUN   = echo "[study] $(1) $(notdir $(@D)): starting; $$(find $(SR) -name FINISHED 2>/dev/null | wc -l) of $(SRUNS) study runs finished" \
         && mkdir -p $(@D) && $(PM) notebooks/$(1).ipynb $(@D)/executed.ipynb -f $(2) -p profile $(PROFILE) -p results_root $(S)
STUDYFIG := $(SR)/13_fig_study/main/executed.ipynb
LINKED   := $(SR)/02_imdb_sft/main/FINISHED $(SR)/03_imdb_preferences/main/FINISHED

study: assets $(STUDYFIG)
	@echo "The study is in figures/STUDY.md (the smoke profile writes to build/smoke/figures); runs in $(S)/."

LINK = mkdir -p $(dir $(@D)) && ln -sfn $(abspath $(<D)) $(@D)
$(SR)/02_imdb_sft/main/FINISHED: $(R)/02_imdb_sft/main/FINISHED
	@$(LINK)
$(SR)/03_imdb_preferences/main/FINISHED: $(R)/03_imdb_preferences/main/FINISHED
	@$(LINK)

$(SR)/03_imdb_preferences/%/FINISHED: notebooks/03_imdb_preferences.ipynb $(SP)/03_imdb_preferences/%.yaml $(LINKED)
	$(call SRUN,03_imdb_preferences,$(SP)/03_imdb_preferences/$*.yaml)

# A study run depends on the pairs it reads, read from its own params file: preferences_run (default
# main, the figure's) and held_out_run; so a new pairs set reruns only the runs that read it.
READS = $(SR)/03_imdb_preferences/$(or $(call PARAM,$(1),preferences_run),main)/FINISHED \
        $(patsubst %,$(SR)/03_imdb_preferences/%/FINISHED,$(call PARAM,$(1),held_out_run))
.SECONDEXPANSION:
$(SR)/04_imdb_dpo_and_baselines/%/FINISHED: notebooks/04_imdb_dpo_and_baselines.ipynb \
		$(SP)/04_imdb_dpo_and_baselines/%.yaml $$(call READS,$(SP)/04_imdb_dpo_and_baselines/$$*.yaml) $(LINKED)
	$(call SRUN,04_imdb_dpo_and_baselines,$(SP)/04_imdb_dpo_and_baselines/$*.yaml)

$(SR)/05_imdb_reward_model/%/FINISHED: notebooks/05_imdb_reward_model.ipynb $(SP)/05_imdb_reward_model/%.yaml \
		$$(call READS,$(SP)/05_imdb_reward_model/$$*.yaml) $(LINKED)
	$(call SRUN,05_imdb_reward_model,$(SP)/05_imdb_reward_model/$*.yaml)

$(SR)/06_imdb_ppo/%/FINISHED: notebooks/06_imdb_ppo.ipynb $(SP)/06_imdb_ppo/%.yaml \
		$$(call READS,$(SP)/06_imdb_ppo/$$*.yaml) $(LINKED)
	$(call SRUN,06_imdb_ppo,$(SP)/06_imdb_ppo/$*.yaml)

$(STUDYFIG): notebooks/13_fig_study.ipynb params/$(PROFILE)/13_fig_study.yaml \
		$(S04:%=$(SR)/04_imdb_dpo_and_baselines/%/FINISHED) $(S05:%=$(SR)/05_imdb_reward_model/%/FINISHED) \
		$(S06:%=$(SR)/06_imdb_ppo/%/FINISHED) \
		$(SWEEP:%=$(R)/04_imdb_dpo_and_baselines/%/FINISHED)
	@mkdir -p $(@D)
	$(PM) $< $(@D)/executing.ipynb -f params/$(PROFILE)/13_fig_study.yaml -p profile $(PROFILE) -p study_root $(S)
	mv $(@D)/executing.ipynb $@

# The local judge (notebook 14): its agreement with the gold classifier on notebook 03's pairs, and
# notebook 09's samples judged again by it; needs the judge's model (make judge-assets), not make assets.
JUDGEFIG := $(R)/14_judge_agreement/main/executed.ipynb

judge-assets: install
	$(PY) -m dpo_core.prepare judge

judge: judge-assets $(JUDGEFIG)
	@echo "The judge's tables are in figures/JUDGE.md (the smoke profile writes to build/smoke/figures); run in $(R)/."

$(JUDGEFIG): notebooks/14_judge_agreement.ipynb params/$(PROFILE)/14_judge_agreement.yaml \
		$(R)/03_imdb_preferences/main/FINISHED $(WINS:%=$(R)/09_imdb_win_rates/%/FINISHED) | judge-assets
	@mkdir -p $(@D)
	$(PM) notebooks/14_judge_agreement.ipynb $(@D)/executing.ipynb -f params/$(PROFILE)/14_judge_agreement.yaml \
	  -p profile $(PROFILE) -p results_root results
	mv $(@D)/executing.ipynb $@

# Speed and memory side by side with TRL (a dev-only dependency), on the tiny model and the
# cpu policy; writes bench/RESULTS.md. Not part of `make test`: timings are never tests.
bench: assets
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) bench/bench_dpo.py --model tiny --steps 10
	$(PY) bench/bench_dpo.py --model smollm2-135m --steps 6
	rm -f bench/LEVERS.json
	$(PY) bench/bench_levers.py --model smollm2-135m --reps 5
	$(PY) bench/bench_levers.py --model smollm2-135m --reps 3 --prompt-tokens 96 \
	  --levers lm-head-scored,lm-head-scored-top,chunked-log-softmax
	$(PY) bench/bench_lengths.py --model smollm2-135m --lengths 16,32,64,128 --steps 3

lab: install
	$(PY) -m jupyter lab notebooks/

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV) results
