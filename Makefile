# Set-up and the jobs of the README. Everything installs into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.plstm_graph-installed

.PHONY: install demo paper test test-long bench clean

# torch first and pinned (an unpinned torch would pull a multi-GB CUDA build), then the
# package without build isolation so that the extension compiles against that torch.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q --no-build-isolation -e ".[test,examples]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/graph_classification.py

# The paper's table: four TU sets x pLSTM, GIN, GCN, GAT, 10 folds x 100 epochs each (many CPU
# hours), WORKERS folds at a time, one process and one thread each (the numbers do not depend
# on WORKERS). The JSON is rewritten after every fold and --resume skips the folds already in
# it, so an interrupted (or partly committed) table continues where it stopped; delete
# docs/paper_results.json to start from scratch.
WORKERS ?= 2
paper: $(STAMP)
	$(BIN)/python examples/graph_classification.py --dataset all --models plstm,gin,gcn,gat \
		--no-curves --quiet --resume --workers $(WORKERS) --threads 1 \
		--output docs/paper_results.json
	$(BIN)/python examples/paper_table.py docs/paper_results.json --plot docs/paper_results.png

test: $(STAMP)
	$(BIN)/python -m pytest tests -q

test-long: $(STAMP)
	$(BIN)/python -m pytest tests -q --long

bench: $(STAMP)
	$(BIN)/python benchmarks/benchmark.py

clean:
	rm -rf build *.egg-info plstm_graph/_C*.so
