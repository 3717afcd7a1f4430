# reeld build. `make` builds build/reeld; see README.md for the rest.
CC      ?= cc
PKGS    := libevent libevent_openssl libpq libcurl json-c libcmark-gfm
LLHTTP  := /usr/share/llhttp
LLHTTPI := /usr/share/include/llhttp

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
           -Wmissing-prototypes -Wformat=2
HARDEN  := -D_FORTIFY_SOURCE=2 -fstack-protector-strong
OPT     ?= -O2 -g
CFLAGS  := -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(HARDEN) -Iinclude -I$(LLHTTPI) \
           $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(EXTRA_CFLAGS)
LDLIBS  := $(shell pkg-config --libs $(PKGS) pocketsphinx 2>/dev/null) \
           -lcmark-gfm-extensions -lmbedtls -lmbedx509 -lmbedcrypto -lm $(EXTRA_LDLIBS)

BUILD   ?= build
SRC     := $(shell find src -name '*.c' | sort)
OBJ     := $(SRC:%.c=$(BUILD)/obj/%.o)
LIBOBJ  := $(filter-out $(BUILD)/obj/src/main.o,$(OBJ))
LLOBJ   := $(BUILD)/obj/llhttp/llhttp.o $(BUILD)/obj/llhttp/api.o $(BUILD)/obj/llhttp/http.o
UNIT    := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))

.DELETE_ON_ERROR:
.PHONY: all deps run test asan fmt fmt-check fuzz bench clean unit
all: $(BUILD)/reeld

$(BUILD)/reeld: $(OBJ) $(LLOBJ)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/obj/%.o: %.c $(wildcard include/reeld/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -c -o $@ $<

# pocketsphinx's include path holds an err.h that would hide glibc's:
# only the recognizer sees it.
$(BUILD)/obj/src/asr/asr.o: CFLAGS += $(shell pkg-config --cflags pocketsphinx 2>/dev/null)

# llhttp is generated code: build it without our warning set.
$(BUILD)/obj/llhttp/%.o: $(LLHTTP)/%.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(OPT) $(HARDEN) $(EXTRA_CFLAGS) -I$(LLHTTPI) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c tests/unit/t.h $(LIBOBJ) $(LLOBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(LIBOBJ) $(LLOBJ) $(LDLIBS)

unit: $(UNIT)

deps:
	@scripts/deps.sh

run: deps all
	@scripts/run.sh

test: deps all unit
	@BUILD=$(BUILD) tests/run

asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
	  EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	  EXTRA_LDLIBS="-fsanitize=address,undefined" test

fmt:
	clang-format -i $(SRC) $(wildcard include/reeld/*.h tests/unit/*.c tests/unit/*.h tests/fuzz/*.c)

fmt-check:
	@clang-format --dry-run -Werror $(SRC) $(wildcard include/reeld/*.h tests/unit/*.c tests/unit/*.h tests/fuzz/*.c)

fuzz:
	@scripts/fuzz.sh $(FUZZ_SECONDS)

bench: all
	@bench/run http

clean:
	rm -rf build build-asan build-fuzz

-include $(OBJ:.o=.d)
