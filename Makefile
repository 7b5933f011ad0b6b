# mae_jax — the README's first two commands are `make demo` and `make test`.
#
# PYTHON must be a Python >= 3.12 (current jax needs it). When the name given
# does not run (e.g. a pyenv shim for a version that is not active), we fall
# back to pyenv's newest installed 3.12.
PYTHON ?= python3.12
VENV ?= .venv
WORKDIR ?= workdirs/demo
PYTEST_ARGS ?=
# Test processes (pytest-xdist): the suite is mostly single-threaded XLA
# compiles, so one per core (2 on the reference machine) is ~20% faster;
# whole files go to one worker (--dist loadfile). PYTEST_WORKERS=0: serial.
PYTEST_WORKERS ?= 2

PY_OK = $(shell $(1) -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 && echo yes)
PYENV_312 = $(shell v=$$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$$' | sort -V | tail -1); \
	[ -n "$$v" ] && echo "$$(pyenv root)/versions/$$v/bin/python3.12")
BASE_PYTHON := $(if $(call PY_OK,$(PYTHON)),$(PYTHON),$(PYENV_312))
VPY := $(VENV)/bin/python

.PHONY: demo video-demo finetune-demo audio-demo spoken-digits test env clean-demo
VIDEO_WORKDIR ?= workdirs/video_demo
AUDIO_WORKDIR ?= workdirs/audio_demo
FINETUNE_WORKDIR ?= workdirs/finetune_demo
env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	@if [ -z "$(BASE_PYTHON)" ]; then \
	  echo "error: need Python >= 3.12: '$(PYTHON)' does not run and pyenv has no 3.12; run 'make PYTHON=/path/to/python3.12'" >&2; exit 1; fi
	@[ -x $(VPY) ] || $(BASE_PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev]'
	@touch $@

demo: env
	$(VPY) -m mae_jax.main --config=configs/demo.py --workdir=$(WORKDIR)

# Pretraining on moving digits, then the probes for the motion direction too.
video-demo: env
	$(VPY) -m mae_jax.main --config=configs/video_demo.py --workdir=$(VIDEO_WORKDIR)
	$(VPY) -m mae_jax.evaluate --workdir=$(VIDEO_WORKDIR) --evals=linear_probe,knn --label_key=direction

# After `make demo`: fine-tune its encoder (and, as the baseline, the same
# recipe from random init), then the frozen-feature probes of the demo.
finetune-demo: env
	$(VPY) -m mae_jax.main --config=configs/finetune_demo.py:init=$(WORKDIR) --workdir=$(FINETUNE_WORKDIR)
	$(VPY) -m mae_jax.main --config=configs/finetune_demo.py:init= --workdir=$(FINETUNE_WORKDIR)_scratch
	$(VPY) -m mae_jax.evaluate --workdir=$(WORKDIR) --evals=linear_probe,knn,attentive_probe

# The spoken digits (eSpeak NG, bundled by the espeakng-loader wheel) are
# generated on first use into ~/.cache/mae_jax/spoken_digits ($MAE_JAX_DATA
# moves it); `make spoken-digits` only generates them.
spoken-digits: env
	$(VPY) -m mae_jax.data.spoken_digits

# Pretraining on spoken digits, then the probes on voices never heard.
audio-demo: env
	$(VPY) -m mae_jax.main --config=configs/audio_demo.py --workdir=$(AUDIO_WORKDIR)

test: env
	$(VPY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

clean-demo:
	rm -rf $(WORKDIR) $(VIDEO_WORKDIR) $(FINETUNE_WORKDIR) $(FINETUNE_WORKDIR)_scratch \
	  $(AUDIO_WORKDIR)
