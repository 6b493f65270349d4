#!/usr/bin/env bash
# Deploy the scorer: `serve deploy cluster/serve_config.yaml` against the cluster's dashboard,
# with the cluster token.
#
# Target: $RAY_ADDRESS (dashboard URL of a real cluster) if set, else the local cluster.
# MODEL_DIR=/abs/path overrides applications[0].args.model_dir (the file holds the in-cluster
# path); the edited copy is written to the state dir, the checked-in file is never modified.
# SERVE_CONFIG=path picks another config file. RG_SERVE_PORT=N overrides http_options.port (the file
# says 8000), e.g. when another Serve on this host already holds 8000.
set -euo pipefail
# shellcheck source=cluster/scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

load_target
cd "$REPO_ROOT"
config="${SERVE_CONFIG:-cluster/serve_config.yaml}"
[[ -f "$config" ]] || die "serve config not found: $config"

if [[ -n "${MODEL_DIR:-}" || -n "${RG_SERVE_PORT:-}" ]]; then
  if [[ -n "${MODEL_DIR:-}" ]]; then
    [[ "$MODEL_DIR" == /* || "$MODEL_DIR" == *://* ]] || die "MODEL_DIR must be absolute or a URI (replicas do not run from the repo): $MODEL_DIR"
  fi
  [[ -z "${RG_SERVE_PORT:-}" || "$RG_SERVE_PORT" =~ ^[0-9]+$ ]] || die "RG_SERVE_PORT must be a port number, got '$RG_SERVE_PORT'"
  mkdir -p "$RG_STATE_DIR"
  out="$RG_STATE_DIR/serve_config.deploy.yaml"
  "$RG_PYTHON" - "$config" "$out" "${MODEL_DIR:-}" "${RG_SERVE_PORT:-}" <<'PY'
import sys
import yaml

src, dst, model_dir, port = sys.argv[1:5]
with open(src, encoding="utf-8") as f:
    cfg = yaml.safe_load(f)
apps = cfg.get("applications") or []
if not apps:
    sys.exit(f"{src}: no applications to deploy")
if model_dir:
    apps[0].setdefault("args", {})["model_dir"] = model_dir
if port:
    cfg.setdefault("http_options", {})["port"] = int(port)
with open(dst, "w", encoding="utf-8") as f:
    yaml.safe_dump(cfg, f, sort_keys=False)
PY
  config="$out"
fi

echo "deploying $config to $RG_JOBS_ADDRESS ($RG_TARGET cluster)"
"$SERVE_BIN" deploy --address "$RG_JOBS_ADDRESS" "$config"
echo "check: $SERVE_BIN status --address $RG_JOBS_ADDRESS"
