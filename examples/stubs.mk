# Included by examples/LANG/Makefile: generates LANG's stubs into $(GEN) with the project's one
# generator, scripts/gen_stubs.py, whenever a proto or the generator changed. Set STUBS_LANG
# (and GEN, default $(BUILD)/gen) before including; depend on $(GEN)/.generated.

ROOT := ../..
BUILD ?= build
PYTHON ?= python3
GEN ?= $(BUILD)/gen
PROTOS := $(wildcard $(ROOT)/protos/jobmesh/v1/*.proto)
.DEFAULT_GOAL := all  # each Makefile's own `all`, not the first rule here

$(GEN)/.generated: $(PROTOS) $(ROOT)/scripts/gen_stubs.py
	rm -rf $(GEN)
	$(PYTHON) $(ROOT)/scripts/gen_stubs.py $(STUBS_LANG) --out $(GEN)
	touch $@

.PHONY: clean
clean:
	rm -rf $(BUILD)
