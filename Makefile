# make test   set up .venv, build attnkern (CUDA kernels too wherever nvcc exists), run the tests
# make bench  the same set-up, then the benchmark table on the present device
# Re-running reuses .venv and rebuilds only what changed (ninja, objects in build/temp).

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.14.1
TORCHVISION_SPEC ?= torchvision==0.29.1
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
FORCE_CUDA ?= $(if $(shell command -v nvcc),1,0)
SOURCES    := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py pyproject.toml

.PHONY: test bench build clean

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) -m attnkern.bench

build: build/.built

$(VENV)/.deps: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)" setuptools wheel ninja pytest hypothesis numpy expecttest pillow "ultralytics==8.4.190"
	touch $@

# The build log keeps nvcc's -Xptxas -v resource usage; build/ptxas.txt is its summary.
build/.built: $(VENV)/.deps $(SOURCES)
	mkdir -p build
	FORCE_CUDA=$(FORCE_CUDA) $(PIP) install --no-build-isolation --no-deps -v -e . > build/build.log 2>&1 \
		|| { tail -n 80 build/build.log; exit 1; }
	grep -E "ptxas info *: (Compiling|Function properties|Used)" build/build.log > build/ptxas.txt || true
	$(PY) -c "import attnkern; print('attnkern built:', attnkern.build_info())"
	@echo "build log: build/build.log; CUDA resource usage: build/ptxas.txt"
	touch $@

clean:
	rm -rf build attnkern/_C*.so attnkern/_build_config.py *.egg-info
