# Two commands from a fresh clone (the README opens with them; .ci/run runs them):
#   make demo    install the requirements, build kdfast._C, run the embedded default study
#   make test    the same install, the test requirements, then the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The built extension is the target: it is rebuilt only when a source or the build recipe is newer.
EXTENSION := kdfast/_C$(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
BUILD_INPUTS := setup.py pyproject.toml requirements.txt $(shell find csrc -type f 2>/dev/null)

.PHONY: install demo test clean

install: $(EXTENSION)

$(EXTENSION): $(BUILD_INPUTS)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-build-isolation -e .
	@touch $@
	$(PYTHON) -m kdfast.info

demo: install
	$(PYTHON) scripts/study.py

test: install
	$(PIP) install -r requirements-test.txt
	$(PYTHON) -m pytest tests -q -p no:cacheprovider

clean:
	rm -rf build kdfast/_C*.so *.egg-info
