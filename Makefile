# make test   set up .venv, build attnkern (CUDA kernels too wherever nvcc exists) and the emulated CUDA
#             kernels (tools/cuda_emulation.py), run the tests (the CUDA kernels on the emulated device too)
# make bench  the same set-up, then the benchmark table on the present device
# make test-sanitizers  the CPU kernels built with AddressSanitizer + UBSan, and the tests run on them
# make test-emulated-sanitizers   the emulated CUDA kernels' tests under ThreadSanitizer, then under
#             AddressSanitizer + UndefinedBehaviorSanitizer
# Re-running reuses .venv and rebuilds only what changed (ninja, objects in build/temp and build/emulated).
# The test runs spread over TEST_WORKERS processes (pytest-xdist): one a core, at most 8 (each imports torch and
# the test dependencies); 0 runs them in the pytest process itself.

PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.14.1
TORCHVISION_SPEC ?= torchvision==0.29.1
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 8 ? n : 8 )))
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip
FORCE_CUDA ?= $(if $(shell command -v nvcc),1,0)
SOURCES    := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py pyproject.toml

EMULATION  := $(PY) tools/cuda_emulation.py
EMULATED_TESTS := tests/test_cuda_emulated.py tests/test_emulator.py tests/test_emulator_warp.py

.PHONY: test bench build build-emulated test-sanitizers test-emulated-sanitizers clean

test: build build-emulated
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

bench: build
	$(PY) -m attnkern.bench

build: build/.built

$(VENV)/.deps: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)" setuptools wheel ninja pytest pytest-xdist hypothesis numpy expecttest pillow "ultralytics==8.4.190" \
		onnx onnxscript onnxruntime cloudpickle
	touch $@

# The build log keeps nvcc's -Xptxas -v resource usage; build/ptxas.txt is its summary (registers, shared
# memory, stack and spills per kernel), which benchmarks/perf_model.py reads (the committed table filling
# what it lacks). An incremental build reports the .cu files it compiled; one that compiled none keeps the
# last summary.
build/.built: $(VENV)/.deps $(SOURCES)
	mkdir -p build
	FORCE_CUDA=$(FORCE_CUDA) $(PIP) install --no-build-isolation --no-deps -v -e . > build/build.log 2>&1 \
		|| { tail -n 80 build/build.log; exit 1; }
	grep -E "ptxas info *: (Compiling|Function properties|Used)|bytes stack frame" build/build.log > build/ptxas.new || true
	if [ -s build/ptxas.new ]; then mv build/ptxas.new build/ptxas.txt; else rm -f build/ptxas.new; fi
	$(PY) -c "import attnkern; print('attnkern built:', attnkern.build_info())"
	@echo "build log: build/build.log; CUDA resource usage: build/ptxas.txt"
	touch $@

# The CUDA kernels compiled by the host compiler against csrc/emulation (build/emulated/plain).
build-emulated: $(VENV)/.deps
	$(EMULATION) build

# Each sanitized library loads only under its runtime (LD_PRELOAD, set by `cuda_emulation.py run`);
# --capture=sys leaves stderr to the sanitizer, whose report would otherwise die with pytest's capture;
# --durations lists the slowest tests (what to trim when CI's time grows).
EMULATED_PYTEST = $(PY) -m pytest -q -p no:cacheprovider --capture=sys -n $(TEST_WORKERS) --durations=10 $(EMULATED_TESTS)

test-emulated-sanitizers: build
	$(EMULATION) build --variant tsan
	$(EMULATION) build --variant asan
	$(EMULATION) run --variant tsan -- $(EMULATED_PYTEST)
	$(EMULATION) run --variant asan -- $(EMULATED_PYTEST)

# The CPU kernels built with $(SANITIZERS) (setup.py's ATTNKERN_SANITIZE: -O1 -g1 -fno-wrapv, so that signed
# overflow is undefined and reported; objects in build/temp-sanitize) next to a copy of the Python package
# in $(SANITIZE_DIR), and $(SANITIZE_TESTS) run on it with the sanitizer runtimes preloaded into Python
# (torch is not instrumented; Python's own allocations are not leak-checked) and that copy first on the path
# of every test process (PYTHONPATH: pytest-xdist's workers too). pytest captures only
# Python-level output (--capture=sys), so that reports reach the log; any report, or a failing test,
# fails the target. The log: $(SANITIZE_DIR)/test.log. The emulated CUDA kernels' tests are left to
# test-emulated-sanitizers, which builds those kernels with the sanitizers.
# SANITIZE_SKIP (files under tests/, or test ids) are left to make test's plain run: they run no line of csrc/
# that the other tests do not (gcov line coverage of the CPU kernels built with --coverage, 2026-12-07: the
# other tests reach all 1406 lines the whole suite reaches) and took three quarters of the sanitized run's
# time. They are export and deployment, the integrations, the benchmark's smoke tests, the CUDA routing's
# plain formulations, and static checks of the build, the headers and the perf model. SANITIZE_SKIP= runs them.
SANITIZERS     ?= address,undefined
SANITIZE_TESTS ?= tests
SANITIZE_SKIP  ?= test_export.py test_yolo_deploy.py test_ultralytics.py test_ddp.py test_fidelity.py test_bench.py \
                  test_cuda_routing.py test_perf_model.py test_sass.py test_headers.py test_header_math.py \
                  test_layout.py test_measure_ops.py test_cpu_capability.py::test_wide_vector_code_only_in_its_capability
SANITIZE_DIR   := build/sanitize
SANITIZE_RUNTIME = $(strip $(foreach lib,$(if $(findstring address,$(SANITIZERS)),libasan.so) \
                   $(if $(findstring undefined,$(SANITIZERS)),libubsan.so),$(shell $(CXX) -print-file-name=$(lib))))
SANITIZE_ENV = LD_PRELOAD="$(SANITIZE_RUNTIME)" ASAN_OPTIONS=detect_leaks=0 \
               UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH=$(abspath $(SANITIZE_DIR))

test-sanitizers: $(VENV)/.deps
	rm -rf $(SANITIZE_DIR)/attnkern
	mkdir -p $(SANITIZE_DIR)/attnkern
	tar -C attnkern --exclude=__pycache__ --exclude='*.so' --exclude=_build_config.py -cf - . | tar -C $(SANITIZE_DIR)/attnkern -xf -
	ATTNKERN_SANITIZE=$(SANITIZERS) $(PY) setup.py build_ext > $(SANITIZE_DIR)/build.log 2>&1 \
		|| { tail -n 80 $(SANITIZE_DIR)/build.log; exit 1; }
	{ cd $(SANITIZE_DIR) && $(SANITIZE_ENV) $(abspath $(PY)) -c "import attnkern; print('attnkern from', attnkern.__file__)" \
		&& $(SANITIZE_ENV) $(abspath $(PY)) -m pytest -q -p no:cacheprovider --capture=sys -n $(TEST_WORKERS) \
		$(addprefix $(CURDIR)/,$(SANITIZE_TESTS)) $(addprefix --ignore=$(CURDIR)/,$(EMULATED_TESTS)) \
		$(foreach t,$(SANITIZE_SKIP),$(if $(findstring ::,$(t)),--deselect=tests/$(t),--ignore=$(CURDIR)/tests/$(t))); echo $$? > $(CURDIR)/$(SANITIZE_DIR)/status; } 2>&1 \
		| tee $(SANITIZE_DIR)/test.log
	! grep -E "runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer" $(SANITIZE_DIR)/test.log > /dev/null \
		|| { echo "sanitizer reports in $(SANITIZE_DIR)/test.log"; exit 1; }
	test "$$(cat $(SANITIZE_DIR)/status)" = 0

clean:
	rm -rf build attnkern/_C*.so attnkern/_build_config.py *.egg-info
