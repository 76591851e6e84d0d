# ckptd - training-dynamics and checkpoint-analysis service.
#
# Targets:
#   make            build build/bin/ckptd and build/bin/ckpt-worker
#   make check      install missing Debian packages (scripts/install-deps),
#                   check the include rules (check-layers), build (on every
#                   core unless -j is given), run every
#                   test (cmocka unit tests, golden and malformed-input
#                   cases, integration tests)
#   make check-layers  the include rules alone (scripts/check-layers: rooms in
#                   pipeline order, includes from the repository root)
#   make bench      benchmarks, reported as ratios to baselines of the same run:
#                   bench/run (engine vs sgemm and PyTorch), bench/queue_bench.sh
#                   (ingest vs psql \copy, claims/s, scheduler overhead),
#                   bench/fetch_bench.sh (ckptd fetch vs curl, prefetch wait)
#                   bench/battery_bench.sh (battery items vs their forwards, BLAS share)
#                   bench/transitions_bench.sh (transition detection, alone and with the database)
#                   bench/transitions_realbench.py eval (the detector's precision and recall on
#                   the labelled real training series of bench/data/transitions)
#                   bench/train_bench.sh (training step vs forward)
#                   bench/sae_bench.sh, from bench/run (SAE training vs sgemm, sae item)
#                   bench/llc_bench.sh (the llc item's seconds per checkpoint vs fwd+bwd)
#                   bench/patching_bench.sh (the patching items in forward-equivalents)
#                   bench/adaptive_bench.sh (the adaptive policy vs step order: to the transition, in all, CPU; a toy item and llc)
#   make fuzz       build every libFuzzer harness of fuzz/ (clang, ASan, UBSan,
#                   build-fuzz/) and run each FUZZ_S seconds from its seed
#                   corpus fuzz/corpus/NAME (scripts/fuzz-run; fuzz/README.md);
#                   make check runs each 3 s (tests/fuzz_smoke.sh); FUZZ_J at once
#   make fuzz-build the harnesses alone
#   make soak       about 10 minutes, not in check: 4 daemons on ~1000 tiny
#                   checkpoints over HTTP while faults are injected every 5-15 s
#                   (tests/soak/soak.sh; needs root for network namespaces)
#   make demo       the main job end to end on the embedded default
#   make install    install binaries, schema and scripts under $(DESTDIR)$(PREFIX)
#   make clean
#
# Variables:
#   PREFIX=/usr/local   DESTDIR=        install location
#   SANITIZE=address,undefined          build with these -fsanitize= checks
#   WERROR=1                            warnings are errors (CI sets it)
#   CC, CFLAGS, LDFLAGS, OPT=-O2        the usual
#   DEPS=0                              make check skips scripts/install-deps
#   BLAS_STATIC=0                       ckpt-worker links the shared OpenBLAS
#                                       (default: the static archive when there)
#   FUZZ_S=10  FUZZ_CC=clang            make fuzz: seconds per harness, compiler
#   FUZZ_J=<cores>                      make fuzz: harnesses run at once
#
# Fault injection (docs/robustness.md): tests/test_fault_alloc and
# tests/test_daemon_fault_alloc link tests/lib/failalloc.o with
# FAILALLOC_LDFLAGS (-Wl,--wrap=malloc,...) and sweep a failing allocation
# over the loaders and the ingest path; tests/daemon_disk_full.sh fills
# tmpfs mounts, tests/daemon_pg_maxconn.sh holds every PostgreSQL slot.

CC ?= cc
OPT ?= -O2
PREFIX ?= /usr/local
DESTDIR ?=
BUILD := build$(if $(SANITIZE),-san)

BLAS_CFLAGS := $(shell pkg-config --cflags openblas 2>/dev/null || echo -I/usr/include/x86_64-linux-gnu/openblas-pthread)
BLAS_LIBS := $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
PQ_CFLAGS := $(shell pkg-config --cflags libpq 2>/dev/null || echo -I/usr/include/postgresql)

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2
CFLAGS_ALL := -std=c11 -D_GNU_SOURCE $(OPT) -g $(WARN) -MMD -MP -I. $(BLAS_CFLAGS) $(PQ_CFLAGS) $(CFLAGS)
LDFLAGS_ALL := $(LDFLAGS)
ifeq ($(WERROR),1)
CFLAGS_ALL += -Werror
endif
ifneq ($(SANITIZE),)
CFLAGS_ALL += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer
LDFLAGS_ALL += -fsanitize=$(SANITIZE)
endif

LIBS_WORKER := $(BLAS_LIBS) -ljansson -lm -lpthread -lz
# libzip (PyTorch zip checkpoints, workers/model/torchzip.c) and libcrypto
# (SHA-256, common/sha256.c) are loaded at their first use (dlopen), not at
# every worker's start; by the sonames the build would link against.
soname = $(shell objdump -p "$$($(CC) -print-file-name=lib$(1).so)" 2>/dev/null | awk '$$1 == "SONAME" { print $$2 }')
LIBZIP_SONAME := $(call soname,zip)
LIBCRYPTO_SONAME := $(call soname,crypto)
ifneq ($(LIBZIP_SONAME),)
$(BUILD)/obj/workers/model/torchzip.o: CFLAGS_ALL += -DCKPT_LIBZIP_SONAME='"$(LIBZIP_SONAME)"'
endif
ifneq ($(LIBCRYPTO_SONAME),)
$(BUILD)/obj/common/sha256.o: CFLAGS_ALL += -DCKPT_LIBCRYPTO_SONAME='"$(LIBCRYPTO_SONAME)"'
endif
# test_torchzip writes zip files of its own with libzip
$(BUILD)/tests/test_torchzip: LIBS_WORKER += -lzip
CMOCKA_LIBS := -lcmocka

COMMON_SRC := $(wildcard common/*.c)
MODEL_SRC := $(wildcard workers/model/*.c)
TEXT_SRC := $(wildcard workers/text/*.c)
BATTERY_SRC := $(wildcard workers/battery/*.c)
TRAIN_SRC := $(wildcard workers/train/*.c)
WORKER_LIB_SRC := $(MODEL_SRC) $(TEXT_SRC) $(TRAIN_SRC) $(BATTERY_SRC)
DAEMON_ROOMS := base plan fetch work store detect read ops
DAEMON_LIB_SRC := $(foreach r,$(DAEMON_ROOMS),$(wildcard daemon/$(r)/*.c))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

COMMON_OBJ := $(call obj,$(COMMON_SRC))
WORKER_LIB_OBJ := $(call obj,$(WORKER_LIB_SRC))

BINS := $(BUILD)/bin/ckpt-worker $(BUILD)/bin/ckptd
WORKER_MAIN := $(wildcard workers/*.c)
DAEMON_MAIN := daemon/main.c
DAEMON_LIB_OBJ := $(call obj,$(DAEMON_LIB_SRC)) $(BUILD)/obj/gen/schema_sql.o
LIBS_DAEMON := -lpq -ljansson -lcurl -lcrypto -lm
# the metrics endpoint (daemon/ops/metrics.c, libmicrohttpd) and systemd
# notification (daemon/ops/notify.c, libsystemd)
OPS_CFLAGS := $(shell pkg-config --cflags libmicrohttpd libsystemd 2>/dev/null)
LIBS_DAEMON += $(shell pkg-config --libs libmicrohttpd libsystemd 2>/dev/null || echo -lmicrohttpd -lsystemd)
CFLAGS_ALL += $(OPS_CFLAGS)

TEST_SRC := $(wildcard tests/test_*.c)
TEST_BINS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
TEST_SCRIPTS := $(wildcard tests/*.sh)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

.PHONY: all check check-layers unit bench soak demo install clean deps golden tokenizer-data fuzz fuzz-build fuzz-bins
.SECONDARY:
all: $(BINS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# The element-wise kernels: -O3 vectorises them, and without trapping math
# the compiler may turn their clamps into selects (nothing here uses
# floating-point traps or errno from libm); their polynomials (exp, erf)
# contract into fused multiply-adds where the CPU has them (-std=c11 turns
# that off by default).
$(BUILD)/obj/workers/model/kernels.o: CFLAGS_ALL += -O3 -fno-trapping-math -fno-math-errno -ffp-contract=fast
$(BUILD)/obj/workers/model/backward.o: CFLAGS_ALL += -O3 -fno-trapping-math -fno-math-errno
$(BUILD)/obj/workers/model/attention.o: CFLAGS_ALL += -O3 -fno-trapping-math -fno-math-errno -ffp-contract=fast
$(BUILD)/obj/workers/model/tensor.o: CFLAGS_ALL += -O3
$(BUILD)/obj/workers/train/adamw.o: CFLAGS_ALL += -O3 -fno-trapping-math -fno-math-errno

# ckpt-worker links OpenBLAS statically when its archive is there (Debian's
# -dev package ships it; BLAS_STATIC=0: the shared library): a daemon starts
# a worker for every claimed checkpoint, and the loader's relocation of the
# 36 MB shared library was a third of a start (docs/families.md).  Its
# Fortran LAPACK needs libgfortran, linked by its runtime soname.  The
# benches that time BLAS by preloading a shim into the shared library use
# $(BUILD)/bench/ckpt-worker-shared.
BLAS_STATIC ?= 1
BLAS_A := $(if $(filter 1,$(BLAS_STATIC)),$(firstword $(wildcard $(addsuffix /libopenblas.a,$(patsubst -L%,%,$(filter -L%,$(BLAS_LIBS)))))))
GFORTRAN_SO := $(wildcard $(shell $(CC) -print-file-name=libgfortran.so.5 2>/dev/null))
ifneq ($(and $(BLAS_A),$(GFORTRAN_SO)),)
LIBS_WORKER_BIN := $(BLAS_A) $(GFORTRAN_SO) $(filter-out $(BLAS_LIBS),$(LIBS_WORKER))
else
LIBS_WORKER_BIN := $(LIBS_WORKER)
endif
$(BUILD)/bin/ckpt-worker: $(call obj,$(WORKER_MAIN)) $(WORKER_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_WORKER_BIN)

$(BUILD)/bench/ckpt-worker-shared: $(call obj,$(WORKER_MAIN)) $(WORKER_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_WORKER)

$(BUILD)/bin/ckptd: $(call obj,$(DAEMON_MAIN)) $(DAEMON_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_DAEMON)

# The migrations are compiled into ckptd, so the binary is all a node needs.
$(BUILD)/gen/schema_sql.c: $(sort $(wildcard schema/[0-9][0-9][0-9]_*.sql)) scripts/embed-sql
	@mkdir -p $(dir $@)
	scripts/embed-sql $(sort $(wildcard schema/[0-9][0-9][0-9]_*.sql)) > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# Tests of the daemon (tests/test_daemon_*.c and DAEMON_UNIT_TESTS below)
# link the daemon library; the rest link the worker library.
$(BUILD)/tests/test_daemon_%: $(BUILD)/obj/tests/test_daemon_%.o $(DAEMON_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_DAEMON) $(CMOCKA_LIBS)

# The daemon modules' own tests (tests/test_<module>.c) link the daemon
# library too; the PostgreSQL-backed ones start a server of their own
# (tests/lib/pg_fixture.h).
DAEMON_UNIT_TESTS := supervise stage detect status node evalset migrate serve
$(addprefix $(BUILD)/tests/test_,$(DAEMON_UNIT_TESTS)): $(BUILD)/tests/test_%: $(BUILD)/obj/tests/test_%.o $(DAEMON_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_DAEMON) $(CMOCKA_LIBS)

# test_plan compares the daemon's SAE site check with the worker's: it
# links both libraries (they share no symbol).
$(BUILD)/tests/test_plan: $(BUILD)/obj/tests/test_plan.o $(DAEMON_LIB_OBJ) $(WORKER_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_DAEMON) $(LIBS_WORKER) $(CMOCKA_LIBS)

# The transition detectors (level-v2 and the former ramp-v1) are pure: their
# test and the tool that runs them on JSON series link them alone (the
# benchmark with the daemon library for its database path).
TR_OBJ := $(BUILD)/obj/daemon/detect/transitions.o $(BUILD)/obj/daemon/detect/transitions_v1.o $(BUILD)/obj/common/err.o
$(BUILD)/tests/test_transitions: $(BUILD)/obj/tests/test_transitions.o $(TR_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ -ljansson -lm $(CMOCKA_LIBS)

$(BUILD)/bench/transitions_series: $(BUILD)/obj/bench/transitions_series.o $(TR_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ -ljansson -lm

$(BUILD)/bench/transitions_bench: $(BUILD)/obj/bench/transitions_bench.o $(DAEMON_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_DAEMON)

# Fault-injection tests route the project's allocations through
# tests/lib/failalloc.c, which counts them and fails the one asked for.
FAILALLOC_LDFLAGS := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=free,--wrap=strdup,--wrap=strndup,--wrap=posix_memalign,--wrap=vasprintf,--wrap=getline,--wrap=__getdelim,--wrap=open_memstream
$(BUILD)/tests/test_fault_alloc: $(BUILD)/obj/tests/test_fault_alloc.o $(BUILD)/obj/tests/lib/failalloc.o $(WORKER_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) $(FAILALLOC_LDFLAGS) -o $@ $^ $(LIBS_WORKER) $(CMOCKA_LIBS)

$(BUILD)/tests/test_daemon_fault_alloc: $(BUILD)/obj/tests/test_daemon_fault_alloc.o $(BUILD)/obj/tests/lib/failalloc.o $(DAEMON_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) $(FAILALLOC_LDFLAGS) -o $@ $^ $(LIBS_DAEMON) $(CMOCKA_LIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(WORKER_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_WORKER) $(CMOCKA_LIBS)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(WORKER_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_WORKER)

deps:
ifneq ($(DEPS),0)
	@scripts/install-deps
endif

# GPT-NeoX-20B's tokenizer.json, which test_tokenizer reads (not committed;
# downloaded once into var/data, checked by SHA-256).
tokenizer-data:
	@scripts/fetch-tokenizer

# Unit tests run from the repository root so they find tests/ data.
# Tests run side by side (scripts/run-tests A+B): the two dynamics_e2e
# runs, each training on one core and serving through its own ports; the
# toy trainings of test_train (one core) beside three tests of one core
# that assert no timings.
TEST_GROUPS := tests/dynamics_e2e.sh+tests/dynamics_e2e_sandybridge.sh \
	$(BUILD)/tests/test_train+tests/cli_probes.sh+tests/export_pandas.sh+tests/sae_saelens.sh
unit: $(BINS) $(TEST_BINS) $(BUILD)/bench/transitions_series tokenizer-data
	@CKPT_WORKER=$(BUILD)/bin/ckpt-worker scripts/run-tests \
		$(filter-out $(subst +, ,$(TEST_GROUPS)),$(TEST_BINS) $(TEST_SCRIPTS)) $(TEST_GROUPS)

# Rooms include only themselves, the rooms before them and common/ (the
# folder READMEs); scripts/check-layers names any include against that.
check-layers:
	@scripts/check-layers

# make check builds on every core unless a -j was given (only a recipe sees
# it, in MAKEFLAGS)
check: deps check-layers
	@j=; case " $$MAKEFLAGS" in *" -j"*|*jobserver*) ;; *) j=-j$$(nproc 2>/dev/null || echo 1) ;; esac; \
	$(MAKE) --no-print-directory $$j all && $(MAKE) --no-print-directory $$j unit

# LD_PRELOAD shim that times BLAS/LAPACK calls (bench/shim/blas_timer.c).
$(BUILD)/bench/blas_timer.so: bench/shim/blas_timer.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -g $(WARN) $(BLAS_CFLAGS) -shared -fPIC -o $@ $< -ldl

bench: $(BINS) $(BENCH_BINS) $(BUILD)/bench/blas_timer.so $(BUILD)/bench/ckpt-worker-shared
ifneq ($(DEPS),0)
	@scripts/install-deps --bench
endif
	@bench/run
	@bench/queue_bench.sh
	@bench/fetch_bench.sh
	@bench/battery_bench.sh
	@bench/train_bench.sh
	@bench/llc_bench.sh
	@bench/transitions_bench.sh
	@bench/transitions_realbench.py eval
	@bench/patching_bench.sh
	@bench/adaptive_bench.sh

# The soak test: bounded to about 10 minutes; prints the faults and the figures.
soak: $(BINS)
	@CKPT_WORKER=$(BUILD)/bin/ckpt-worker tests/soak/soak.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@scripts/demo

# Regenerate golden files (needs python3-torch; make check does not).
# The battery references (tests/reference/*_ref.py but gptneox_ref.py) need numpy only.
golden: build/bin/ckpt-worker
	/usr/bin/python3 tests/reference/gptneox_ref.py
	/usr/bin/python3 tests/reference/heads_ref.py
	/usr/bin/python3 tests/cases/make_safetensors_cases.py
	/usr/bin/python3 tests/reference/make_torchzip_fixtures.py
	/usr/bin/python3 tests/reference/probe_ref.py
	/usr/bin/python3 tests/reference/grad_ref.py
	/usr/bin/python3 tests/reference/weights_ref.py
	/usr/bin/python3 tests/reference/integrity_ref.py
	/usr/bin/python3 tests/reference/lens_ref.py
	/usr/bin/python3 tests/reference/composition_ref.py
	/usr/bin/python3 tests/reference/task_ref.py
	/usr/bin/python3 tests/reference/transitions_ref.py
	/usr/bin/python3 tests/reference/transitions_v2_ref.py
	/usr/bin/python3 tests/reference/sae_ref.py
	/usr/bin/python3 tests/reference/sae_match_ref.py
	/usr/bin/python3 tests/reference/llc_ref.py
	/usr/bin/python3 tests/reference/rng_ref.py
	/usr/bin/python3 tests/reference/sae_version_ref.py
	/usr/bin/python3 tests/cases/make_sae_cases.py
	/usr/bin/python3 tests/reference/patching_ref.py

# ---- fuzzing: one libFuzzer harness per parser (fuzz/README.md) ----
# `make fuzz` builds every harness with clang into build-fuzz/ (coverage,
# ASan and UBSan in every object, UB fatal) and runs each FUZZ_S seconds from
# its committed seed corpus fuzz/corpus/NAME (new inputs go to
# build-fuzz/corpus/NAME, crashes to build-fuzz/crashes/NAME).
FUZZ_CC ?= clang
FUZZ_S ?= 10
FUZZ_J ?= $(shell nproc 2>/dev/null || echo 1)
FUZZ_BUILD := build-fuzz
FUZZ_WORKER := safetensors torchzip pickle model_config tokenizer tokenize npy tokens probe_set task sae
FUZZ_DAEMON := hub daemon_config
FUZZ_NAMES := $(FUZZ_WORKER) $(FUZZ_DAEMON)

fuzz-build:
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) OPT=-O1 \
		SANITIZE=fuzzer-no-link,address,undefined CFLAGS="-fno-sanitize-recover=all $(CFLAGS)" \
		fuzz-bins

fuzz: fuzz-build
	@scripts/fuzz-run --build $(FUZZ_BUILD) --seconds $(FUZZ_S) --jobs $(FUZZ_J) $(FUZZ_NAMES)

fuzz-bins: $(addprefix $(BUILD)/fuzz/fuzz_,$(FUZZ_NAMES))

$(addprefix $(BUILD)/fuzz/fuzz_,$(FUZZ_WORKER)): $(BUILD)/fuzz/fuzz_%: $(BUILD)/obj/fuzz/fuzz_%.o $(BUILD)/obj/fuzz/fuzz_util.o $(WORKER_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -fsanitize=fuzzer -o $@ $^ $(LIBS_WORKER)

$(addprefix $(BUILD)/fuzz/fuzz_,$(FUZZ_DAEMON)): $(BUILD)/fuzz/fuzz_%: $(BUILD)/obj/fuzz/fuzz_%.o $(BUILD)/obj/fuzz/fuzz_util.o $(DAEMON_LIB_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -fsanitize=fuzzer -o $@ $^ $(LIBS_DAEMON)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/ckptd
	install -m 755 $(BINS) $(DESTDIR)$(PREFIX)/bin/
	cp -r scripts $(DESTDIR)$(PREFIX)/share/ckptd/
	cp -r pairs $(DESTDIR)$(PREFIX)/share/ckptd/
	if [ -n "$$(ls schema 2>/dev/null)" ]; then cp -r schema $(DESTDIR)$(PREFIX)/share/ckptd/; fi

clean:
	rm -rf $(BUILD) $(FUZZ_BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
