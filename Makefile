# reviewgen: every target installs what it needs into .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned for local CPU installs (a wheel lies on local disk; an open range pulls a multi-GB CUDA
# build). pyproject keeps the range open for clusters.
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test demo eval ablation bench lint clean serve-config cluster-up cluster-down submit-train submit-nightly deploy-scorer

install: $(VENV)/.installed

# pip's own notices go to .venv/install.log (shown in full if the install fails), so the console stays ours.
$(VENV)/.installed: pyproject.toml
	@echo "installing into $(VENV) (log: $(VENV)/install.log)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@{ $(BIN)/pip install -q --upgrade pip && \
	   $(BIN)/pip install -q "$(TORCH_PIN)" && \
	   $(BIN)/pip install -q -e ".[dev,eval,embed,bench,track]" "$(TORCH_PIN)"; } > $(VENV)/install.log 2>&1 \
	   || { cat $(VENV)/install.log; echo "install failed (log: $(VENV)/install.log)"; exit 1; }
	@touch $@

## make test: the whole suite on CPU with tiny models and one local Ray per session
test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

## make demo: prepare the carried sample, train (Ray Train), generate (Ray Data), score (Ray Serve), report
demo: install
	@$(BIN)/reviewgen demo --out runs/demo

## make eval: the evaluation report on the demo model (run `make demo` first)
eval: install
	test -f runs/demo/model/meta.json || $(BIN)/reviewgen demo --out runs/demo
	$(BIN)/reviewgen evaluate --model runs/demo/model --data runs/demo/data --out runs/demo/eval \
		--products 40 --seeds 0,1,2 --temperatures 0.7,0.9,1.1,1.3

## make ablation: a realness-only GAN branched off the demo's MLE checkpoint (same MLE, same steps), evaluated
## beside the demo's GAN (realness + condition rewards) and its MLE at matched diversity (run `make demo` first)
ablation: install
	test -f runs/demo/model/mle/meta.json || $(BIN)/reviewgen demo --out runs/demo
	$(BIN)/python scripts/gan_ablation/branch.py runs/demo/model/mle runs/demo/data runs/demo/ablation/realness \
		train.rating_reward_weight=0 train.category_reward_weight=0
	$(BIN)/reviewgen evaluate --model runs/demo/model --data runs/demo/data --out runs/demo/ablation/eval \
		--products 40 --seeds 0,1,2 --temperatures 0.7,0.9,1.1,1.3 --compare realness=runs/demo/ablation/realness

## make lint: ruff's linter (pyflakes, pycodestyle, import order) and formatter check; settings in pyproject.toml
lint: install
	$(BIN)/ruff check reviewgen tests bench jobs scripts
	$(BIN)/ruff format --check reviewgen tests bench jobs scripts

## make bench: throughput/memory benchmarks, figures written to bench/results/
bench: install
	$(BIN)/python -m bench.run_all --out bench/results

serve-config: install
	$(BIN)/python scripts/build_serve_config.py

# -- cluster (set RAY_ADDRESS for a real cluster; otherwise a local 2-node cluster on this machine) --------
CATALOG ?= $(CURDIR)/data/sample/catalog_flipkart_sample_1050.parquet
CATALOG_PRESET ?= flipkart
cluster-up: install
	cluster/scripts/cluster_up.sh
cluster-down:
	cluster/scripts/cluster_down.sh
TRAIN_CONFIG ?= $(CURDIR)/configs/demo.yaml
runs/prepared/stats.json: | install
	$(BIN)/reviewgen prepare --out runs/prepared
submit-train: install runs/prepared/stats.json
	cluster/scripts/submit.sh train --data $(CURDIR)/runs/prepared --out $(CURDIR)/runs/cluster-train --config $(TRAIN_CONFIG) --num-workers 2 --storage-path $(CURDIR)/runs/ray-results --name reviewgen-train $(TRAIN_ARGS)
# The nightly job signs every review and refuses to run without a watermark key: WATERMARK_KEY_FILE (default:
# $REVIEWGEN_WATERMARK_KEY_FILE) is passed as --watermark-key-file, an absolute path readable where the job's
# driver runs (the head node), outside the repo (the job uploads the working dir). GEN_ARGS=--no-watermark
# runs unwatermarked instead (recorded in the manifest and the run id).
WATERMARK_KEY_FILE ?= $(REVIEWGEN_WATERMARK_KEY_FILE)
WM_KEY_PATH = $(if $(WATERMARK_KEY_FILE),$(abspath $(WATERMARK_KEY_FILE)))
submit-nightly: install
	@test -n "$(DATE)" || { echo "usage: make submit-nightly DATE=YYYY-MM-DD WATERMARK_KEY_FILE=/abs/keys" >&2; exit 2; }
	@test -n "$(WM_KEY_PATH)$(findstring --no-watermark,$(GEN_ARGS))" || { echo "make submit-nightly: no watermark key: set WATERMARK_KEY_FILE=/abs/path/to/keys (one key per line, the first signs), or GEN_ARGS=--no-watermark" >&2; exit 2; }
	@case "$(WM_KEY_PATH)" in "$(CURDIR)"/*) echo "make submit-nightly: WATERMARK_KEY_FILE is inside the repo, whose working dir the job uploads: keep keys outside it" >&2; exit 2;; esac
	cluster/scripts/submit.sh nightly $(DATE) --model $(CURDIR)/runs/cluster-train --catalog $(CATALOG) --preset $(CATALOG_PRESET) --out $(CURDIR)/runs/generated --reviews-per-product 3 $(if $(WM_KEY_PATH),--watermark-key-file $(WM_KEY_PATH)) $(GEN_ARGS)
deploy-scorer: install
	MODEL_DIR=$(or $(MODEL_DIR),$(CURDIR)/runs/cluster-train) cluster/scripts/deploy_scorer.sh

clean:
	rm -rf runs .pytest_cache
