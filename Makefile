# Two commands on a fresh machine: `make run` (the whole pipeline on the bundled sample)
# and `make test`. Both create the virtual environment on first use.

PYTHON ?= python3.11
VENV ?= .venv
MKT_HOME ?= $(CURDIR)/.mkt
STORE := pricerunner-sample
export MKT_HOME

.PHONY: install run test lint clean

install: $(VENV)/.installed

# torch is pinned first: unpinned, sentence-transformers would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(VENV)/bin/mkt add-store $(STORE) --config examples/pricerunner/store.yaml
	$(VENV)/bin/mkt run $(STORE)
	$(VENV)/bin/mkt classify $(STORE) \
		"apple iphone 8 plus 64gb silver" \
		"bosch serie 4 sms46ii01g freestanding dishwasher" \
		"samsung ue55nu7100 55 inch 4k smart tv" \
		"intel core i5-8400 2.8ghz hexa core processor"

test: install
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff format --check mkt tests bench
	$(VENV)/bin/ruff check mkt tests bench

clean:
	rm -rf $(MKT_HOME)
