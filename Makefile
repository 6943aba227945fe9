# fsdpmerge - merge sharded FSDP checkpoints into a HuggingFace model, with MPI.
#
#   make            build bin/fsdpmerge and bin/fsdpsynth
#   make test       every test (unit, unit under ASan+UBSan, integration, errors)
#   make example    synthesize a small checkpoint and merge it with mpirun
#   make help       list the targets
#
# Objects go to build/ (normal) and build-asan/ (sanitizers), never shared.

CC       ?= mpicc
ifeq ($(origin CC),default)
CC       := mpicc
endif
PKGS     := libzip libcjson zlib
# Parallel HDF5 (--format hdf5): used when pkg-config finds hdf5-openmpi;
# HDF5=0 builds without it (then --format hdf5 is refused with a message).
HDF5     ?= $(shell pkg-config --exists hdf5-openmpi 2>/dev/null && echo 1 || echo 0)
ifeq ($(HDF5),1)
PKGS     += hdf5-openmpi
endif
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null || echo -lcmocka)

WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
            -Wvla -Wpointer-arith -Wwrite-strings -Wno-missing-field-initializers
ifeq ($(WERROR),1)
WARN     += -Werror
endif
CPPFLAGS := -Iinclude -D_GNU_SOURCE $(PKG_CFLAGS)
ifeq ($(HDF5),1)
CPPFLAGS += -DFM_HAVE_HDF5
endif
CFLAGS   ?= -O2 -g
CFLAGS   += -std=c11 $(WARN) -MMD -MP
LDLIBS   := $(PKG_LIBS) -lm

ASAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
# test-only hooks (FSDPMERGE_TEST_CORRUPT, see cmd/verify.c) exist in the sanitizer build only
ASAN_FLAGS += -DFM_TEST_HOOKS

VERSION  := $(shell cat VERSION 2>/dev/null || echo 0.0.0)
CPPFLAGS += -DFM_VERSION=\"$(VERSION)\"

Q := $(if $(filter 1,$(V)),,@)

PROG_SRCS := src/cmd/main.c src/synth/synth_main.c
LIB_SRCS  := $(filter-out $(PROG_SRCS),$(wildcard src/*/*.c))
UNIT_SRCS := $(wildcard mpi_tests/unit/test_*.c)

LIB_OBJS      := $(LIB_SRCS:src/%.c=build/obj/%.o)
LIB_OBJS_ASAN := $(LIB_SRCS:src/%.c=build-asan/obj/%.o)
UNIT_BINS      := $(UNIT_SRCS:mpi_tests/unit/%.c=build/tests/%)
UNIT_BINS_ASAN := $(UNIT_SRCS:mpi_tests/unit/%.c=build-asan/tests/%)

.PHONY: all test unit unit-asan integration example bench clean help install uninstall deb asan-bin check-layers faultinject fuzz fuzz-replay

## all: build bin/fsdpmerge and bin/fsdpsynth
all: bin/fsdpmerge bin/fsdpsynth

bin/fsdpmerge: build/obj/cmd/main.o $(LIB_OBJS)
	@mkdir -p $(@D)
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

bin/fsdpsynth: build/obj/synth/synth_main.o $(LIB_OBJS)
	@mkdir -p $(@D)
	$(Q)$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

## asan-bin: bin/fsdpmerge built with AddressSanitizer + UBSan (build-asan/bin/fsdpmerge)
asan-bin: build-asan/bin/fsdpmerge

build-asan/bin/fsdpmerge: build-asan/obj/cmd/main.o $(LIB_OBJS_ASAN)
	@mkdir -p $(@D)
	$(Q)$(CC) $(filter-out -O2,$(CFLAGS)) $(ASAN_FLAGS) -o $@ $^ $(LDLIBS)

build/obj/%.o: src/%.c
	@mkdir -p $(@D)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

build-asan/obj/%.o: src/%.c
	@mkdir -p $(@D)
	$(Q)$(CC) $(CPPFLAGS) $(filter-out -O2,$(CFLAGS)) $(ASAN_FLAGS) -c -o $@ $<

build/tests/%: mpi_tests/unit/%.c $(LIB_OBJS)
	@mkdir -p $(@D)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< $(LIB_OBJS) $(LDLIBS) $(CMOCKA_LIBS)

build-asan/tests/%: mpi_tests/unit/%.c $(LIB_OBJS_ASAN)
	@mkdir -p $(@D)
	$(Q)$(CC) $(CPPFLAGS) $(filter-out -O2,$(CFLAGS)) $(ASAN_FLAGS) -o $@ $< $(LIB_OBJS_ASAN) $(LDLIBS) $(CMOCKA_LIBS)

## unit: build the cmocka unit tests (normal and sanitizer builds)
unit: $(UNIT_BINS) $(UNIT_BINS_ASAN)

## unit-asan: only the sanitizer build of the unit tests
unit-asan: $(UNIT_BINS_ASAN)

## faultinject: the test-only LD_PRELOAD shim that makes chosen calls fail (mpi_tests/faultinject/)
faultinject: build/faultinject.so

build/faultinject.so: mpi_tests/faultinject/faultinject.c
	@mkdir -p $(@D)
	$(Q)gcc -shared -fPIC -O2 -Wall -Wextra -o $@ $< -ldl

# Fuzzing (mpi_tests/fuzz/): one libFuzzer harness per parser. fuzz-replay
# builds each with gcc + a replay main under ASan+UBSan (the test suite runs
# the corpus through them); fuzz builds them with clang's libFuzzer and runs
# each for FUZZ_SECONDS (tools/fuzz.sh).
FUZZ_HARNESSES := pkl ptz st json
FUZZ_REPLAY    := $(FUZZ_HARNESSES:%=build-asan/fuzz/replay_%)
FUZZ_BINS      := $(FUZZ_HARNESSES:%=build-fuzz/fuzz_%)
LIB_OBJS_FUZZ  := $(LIB_SRCS:src/%.c=build-fuzz/obj/%.o)
FUZZ_CC        ?= clang
FUZZ_FLAGS     := -O1 -g -fno-omit-frame-pointer $(shell mpicc --showme:compile 2>/dev/null)
FUZZ_SECONDS   ?= 600

## fuzz-replay: the fuzz harnesses as plain ASan+UBSan programs that replay files
fuzz-replay: $(FUZZ_REPLAY)

build-asan/fuzz/replay_%: mpi_tests/fuzz/fuzz_%.c mpi_tests/fuzz/replay_main.c $(LIB_OBJS_ASAN)
	@mkdir -p $(@D)
	$(Q)$(CC) $(CPPFLAGS) $(filter-out -O2 -MMD -MP,$(CFLAGS)) $(ASAN_FLAGS) -o $@ $< mpi_tests/fuzz/replay_main.c $(LIB_OBJS_ASAN) $(LDLIBS)

build-fuzz/obj/%.o: src/%.c
	@mkdir -p $(@D)
	$(Q)$(FUZZ_CC) $(CPPFLAGS) -std=c11 $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link,address,undefined -c -o $@ $<

build-fuzz/fuzz_%: mpi_tests/fuzz/fuzz_%.c $(LIB_OBJS_FUZZ)
	@mkdir -p $(@D)
	$(Q)$(FUZZ_CC) $(CPPFLAGS) -std=c11 $(FUZZ_FLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(LIB_OBJS_FUZZ) \
	    $(shell mpicc --showme:link 2>/dev/null) $(LDLIBS)

## fuzz: libFuzzer on every harness, FUZZ_SECONDS each (default 600; clang needed: tools/deps.sh --test)
fuzz: $(FUZZ_BINS)
	$(Q)FUZZ_SECONDS=$(FUZZ_SECONDS) bash tools/fuzz.sh

## test: run every test; the last line is "N passed, M failed"
test: all unit asan-bin faultinject fuzz-replay
	$(Q)bash mpi_tests/run_all.sh

## check-layers: fail when a source includes a layer above its own (src/*/README.md)
check-layers:
	$(Q)sh tools/check_layers.sh

## example: synthesize a small FSDP2 checkpoint and merge it with mpirun -np 4
example: all
	$(Q)bash tools/example.sh

## bench: the memory and throughput benchmark (BENCH_DIR for scratch space)
bench: all
	$(Q)bash tools/bench.sh

## install: install under $(DESTDIR)$(PREFIX) (default /usr/local): binaries, launchers, man page, docs, modulefile
PREFIX  ?= /usr/local
BINDIR  := $(PREFIX)/bin
SHAREDIR := $(PREFIX)/share/fsdpmerge
MANDIR  := $(PREFIX)/share/man/man1
DOCDIR  := $(PREFIX)/share/doc/fsdpmerge
DOCS    := README.md $(wildcard docs/*.md docs/*.png)

# The manual is printed by the program from the option table that prints --help.
build/fsdpmerge.1: bin/fsdpmerge
	@mkdir -p $(@D)
	$(Q)bin/fsdpmerge --man > $@

install: all build/fsdpmerge.1
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SHAREDIR) $(DESTDIR)$(MANDIR) $(DESTDIR)$(DOCDIR)
	install -m 0755 bin/fsdpmerge bin/fsdpsynth launch/fsdpmerge-run $(DESTDIR)$(BINDIR)/
	install -m 0644 launch/fsdpmerge.sbatch $(DESTDIR)$(SHAREDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' launch/fsdpmerge.modulefile.in > $(DESTDIR)$(SHAREDIR)/modulefile
	install -m 0644 build/fsdpmerge.1 $(DESTDIR)$(MANDIR)/
	install -m 0644 $(DOCS) $(DESTDIR)$(DOCDIR)/

## uninstall: remove what install put under $(DESTDIR)$(PREFIX)
uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,fsdpmerge fsdpsynth fsdpmerge-run)
	rm -f $(DESTDIR)$(SHAREDIR)/fsdpmerge.sbatch $(DESTDIR)$(SHAREDIR)/modulefile $(DESTDIR)$(MANDIR)/fsdpmerge.1
	rm -f $(addprefix $(DESTDIR)$(DOCDIR)/,$(notdir $(DOCS)))
	-rmdir $(DESTDIR)$(SHAREDIR) $(DESTDIR)$(DOCDIR) 2>/dev/null

## deb: a Debian package built from the tree with dpkg-buildpackage (build/deb/fsdpmerge_*.deb)
deb:
	$(Q)sh tools/build_deb.sh

## clean: remove build outputs
clean:
	rm -rf build build-asan build-fuzz bin

## help: list the targets
help:
	@grep -E '^## ' Makefile | sed 's/^## /  /'

.SECONDARY:

-include $(LIB_OBJS:.o=.d) $(LIB_OBJS_ASAN:.o=.d) build/obj/cmd/main.d build/obj/synth/synth_main.d build-asan/obj/cmd/main.d
