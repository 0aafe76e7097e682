# Two commands do all the set-up:
#   make course [PROFILE=smoke|cpu|gpu|full]   create .venv, install, run the whole course
#   make test                                  create .venv, install, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= auto
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: course test install lock student-edition clean-runs

$(STAMP): pyproject.toml requirements/lock.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ needed, found " + sys.version.split()[0]'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/lock.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

course: $(STAMP)
	$(BIN)/prostate-course run --profile $(PROFILE)

test: $(STAMP)
	$(BIN)/python -m pytest

student-edition: $(STAMP)
	$(BIN)/prostate-course student-edition --out student

lock: $(STAMP)
	@echo "# Exact versions used by CI and Binder (pip install -c requirements/lock.txt -e .[dev])." > requirements/lock.txt.tmp
	@echo "# Regenerate: make lock. Floors for users live in pyproject.toml." >> requirements/lock.txt.tmp
	$(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' >> requirements/lock.txt.tmp
	@mv requirements/lock.txt.tmp requirements/lock.txt

clean-runs:
	rm -rf runs
