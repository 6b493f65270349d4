#!/usr/bin/env bash
# Start a local two-node Ray cluster (head + 1 worker) on this machine, token auth on.
#
# Each node gets its own --temp-dir (a shared one made job working dirs vanish mid-run), bounded
# memory/object store/CPUs (otherwise each node claims the whole machine), and non-default ports
# so it does not collide with anyone else's `ray start` on the same host. The dashboard binds to
# 127.0.0.1 only. Writes $RG_STATE_DIR/env.sh, which submit.sh / deploy_scorer.sh source.
#
# Tunables (env): RG_STATE_DIR, RG_HEAD_PORT (6390), RG_DASHBOARD_PORT (8266),
# RG_CLIENT_PORT (23390; outside the 10002-19999 worker port range), RG_HEAD_CPUS (2), RG_WORKER_CPUS (2), RG_NODE_MEMORY (3 GiB),
# RG_OBJECT_STORE_MEMORY (512 MiB), RG_PORT_BASE (23400; agent/metrics ports, 10 used).
set -euo pipefail
# shellcheck source=cluster/scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

RG_HEAD_PORT="${RG_HEAD_PORT:-6390}"
RG_DASHBOARD_PORT="${RG_DASHBOARD_PORT:-8266}"
RG_CLIENT_PORT="${RG_CLIENT_PORT:-23390}"
# Logical CPUs above the 2 physical ones on purpose: with exactly 2, an actor pool or a
# 2-worker TorchTrainer holds every CPU and the read tasks never schedule.
RG_HEAD_CPUS="${RG_HEAD_CPUS:-2}"
RG_WORKER_CPUS="${RG_WORKER_CPUS:-2}"
RG_NODE_MEMORY="${RG_NODE_MEMORY:-3221225472}"
RG_OBJECT_STORE_MEMORY="${RG_OBJECT_STORE_MEMORY:-536870912}"
RG_PORT_BASE="${RG_PORT_BASE:-23400}"

if [[ -f "$RG_STATE_DIR/head.started" ]]; then
  die "a local cluster already runs from $RG_STATE_DIR (run cluster/scripts/cluster_down.sh first)"
fi
mkdir -p "$RG_STATE_DIR"
chmod 700 "$RG_STATE_DIR"

# Token: a fresh random secret per cluster, readable by the owner only. (A plain
# `ray.init()` would write a world-readable ~/.ray/auth_token; we never rely on that file.)
TOKEN_FILE="$RG_STATE_DIR/auth_token"
(umask 077 && "$RG_PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$TOKEN_FILE")
chmod 600 "$TOKEN_FILE"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"
# The package is not pip-installed in the dev venv: put the repo on the nodes' import path,
# as the cluster image's `pip install .` does, so Serve replicas can import reviewgen.
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export RAY_USAGE_STATS_ENABLED=0
# Job entrypoints run `python ...` from PATH on the nodes: make that the venv's python.
if [[ "$RAY_BIN" == */* ]]; then export PATH="$(dirname "$RAY_BIN"):$PATH"; fi
# Every process of this cluster inherits this marker; cluster_down.sh stops exactly those.
export RG_RAY_CLUSTER_MARKER="$RG_STATE_DIR"

NODE_IP="$("$RG_PYTHON" -c 'from ray._private.services import get_node_ip_address as f; print(f())')"
GCS_ADDRESS="$NODE_IP:$RG_HEAD_PORT"
DASHBOARD_URL="http://127.0.0.1:$RG_DASHBOARD_PORT"

# Ports every node binds; distinct per node since both share one host.
node_ports() {  # $1 = offset within RG_PORT_BASE
  local b=$((RG_PORT_BASE + $1))
  echo "--node-manager-port $b --object-manager-port $((b + 1)) --metrics-export-port $((b + 2))" \
       "--dashboard-agent-listen-port $((b + 3)) --dashboard-agent-grpc-port $((b + 4))" \
       "--runtime-env-agent-port $((b + 5))"
}

echo "starting head on $GCS_ADDRESS (state: $RG_STATE_DIR)"
# shellcheck disable=SC2046  # node_ports output is meant to split into flags
"$RAY_BIN" start --head \
  --port "$RG_HEAD_PORT" \
  --dashboard-host 127.0.0.1 --dashboard-port "$RG_DASHBOARD_PORT" \
  --ray-client-server-port "$RG_CLIENT_PORT" \
  --num-cpus "$RG_HEAD_CPUS" --num-gpus 0 \
  --memory "$RG_NODE_MEMORY" --object-store-memory "$RG_OBJECT_STORE_MEMORY" \
  --temp-dir "$RG_STATE_DIR/head" \
  $(node_ports 0) \
  --disable-usage-stats >"$RG_STATE_DIR/head.log" 2>&1 || { cat "$RG_STATE_DIR/head.log" >&2; die "head failed to start"; }
touch "$RG_STATE_DIR/head.started"

echo "starting worker"
# shellcheck disable=SC2046
"$RAY_BIN" start --address "$GCS_ADDRESS" \
  --num-cpus "$RG_WORKER_CPUS" --num-gpus 0 \
  --memory "$RG_NODE_MEMORY" --object-store-memory "$RG_OBJECT_STORE_MEMORY" \
  --temp-dir "$RG_STATE_DIR/worker" \
  $(node_ports 10) \
  --disable-usage-stats >"$RG_STATE_DIR/worker.log" 2>&1 || { cat "$RG_STATE_DIR/worker.log" >&2; die "worker failed to start (head still up: run cluster_down.sh)"; }
touch "$RG_STATE_DIR/worker.started"

cat >"$RG_ENV_FILE" <<ENV
# Written by cluster/scripts/cluster_up.sh. Source it to talk to the local cluster.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"
# Jobs API / dashboard (ray job ..., serve deploy). RAY_ADDRESS is left unset on purpose:
# \`ray status\` reads it as a GCS address. Use: ray status --address "\$RG_GCS_ADDRESS".
export RAY_API_SERVER_ADDRESS="$DASHBOARD_URL"
export RG_DASHBOARD_URL="$DASHBOARD_URL"
export RG_GCS_ADDRESS="$GCS_ADDRESS"
export RG_STATE_DIR="$RG_STATE_DIR"
ENV
chmod 600 "$RG_ENV_FILE"

# The dashboard (Jobs API) comes up a few seconds after `ray start` returns.
for _ in $(seq 1 60); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$TOKEN_FILE")" "$DASHBOARD_URL/api/version" || true)"
  [[ "$code" == "200" ]] && break
  sleep 1
done
[[ "$code" == "200" ]] || die "dashboard at $DASHBOARD_URL did not answer (last HTTP code: $code)"

"$RAY_BIN" status --address "$GCS_ADDRESS"
cat <<MSG

Local Ray cluster is up (token auth on).
  Jobs API:   RAY_ADDRESS=$DASHBOARD_URL
  GCS:        $GCS_ADDRESS
  Env file:   source $RG_ENV_FILE
  Submit:     cluster/scripts/submit.sh train ...   |   cluster/scripts/submit.sh nightly YYYY-MM-DD ...
  Stop:       cluster/scripts/cluster_down.sh
MSG
