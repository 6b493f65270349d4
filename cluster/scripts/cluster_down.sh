#!/usr/bin/env bash
# Stop the local cluster started by cluster_up.sh, and nothing else.
#
# `ray stop` is not used: it kills every Ray process of this user on the machine, including
# other engineers' clusters. Instead we signal, by PID, only the processes that belong to this
# cluster: those carrying our marker env var or our state dir / GCS address on their command
# line, plus all their descendants (workers, agents, dashboard subprocesses).
# Safe to run when the cluster is already down.
set -euo pipefail
# shellcheck source=cluster/scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

if [[ ! -d "$RG_STATE_DIR" ]]; then
  echo "no local cluster state at $RG_STATE_DIR: nothing to stop"
  exit 0
fi
GCS_ADDRESS=""
if [[ -f "$RG_ENV_FILE" ]]; then
  GCS_ADDRESS="$(sed -n 's/^export RG_GCS_ADDRESS="\(.*\)"$/\1/p' "$RG_ENV_FILE")"
fi

# PIDs that directly belong to this cluster.
root_pids() {
  local d pid
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    [[ "$pid" == "$$" ]] && continue
    if { tr '\0' '\n' <"$d/environ"; } 2>/dev/null | grep -qxF "RG_RAY_CLUSTER_MARKER=$RG_STATE_DIR"; then
      echo "$pid"; continue
    fi
    local cmd
    cmd="$({ tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null || true)"
    [[ -z "$cmd" ]] && continue
    if [[ "$cmd" == *"$RG_STATE_DIR/"* ]] || { [[ -n "$GCS_ADDRESS" ]] && [[ "$cmd" == *"ray.util.client.server --address=$GCS_ADDRESS "* ]]; }; then
      echo "$pid"
    fi
  done
}

# Close the set under "child of": ray::IDLE workers and agents are renamed and carry no path.
with_descendants() {
  local -A keep=()
  local pid ppid changed=1
  for pid in "$@"; do keep[$pid]=1; done
  local table
  table="$(ps -eo pid=,ppid=)"
  while (( changed )); do
    changed=0
    while read -r pid ppid; do
      if [[ -n "${keep[$ppid]:-}" && -z "${keep[$pid]:-}" ]]; then keep[$pid]=1; changed=1; fi
    done <<<"$table"
  done
  echo "${!keep[@]}"
}

# SIGTERM, wait up to RG_STOP_GRACE_S (10 s), then SIGKILL what is left.
stop_pids() {
  (( $# == 0 )) && return 0
  kill -TERM "$@" 2>/dev/null || true
  local alive=() p
  for _ in $(seq 1 $(( ${RG_STOP_GRACE_S:-10} * 2 ))); do
    alive=()
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
    (( ${#alive[@]} == 0 )) && return 0
    sleep 0.5
  done
  echo "SIGKILL for ${#alive[@]} processes still alive: ${alive[*]}"
  kill -KILL "${alive[@]}" 2>/dev/null || true
}

mapfile -t roots < <(root_pids)
if (( ${#roots[@]} == 0 )); then
  echo "no running processes for the cluster in $RG_STATE_DIR"
else
  read -r -a pids <<<"$(with_descendants "${roots[@]}")"
  # Raylets and workers first, GCS last: a raylet whose GCS is already gone stalls its
  # graceful shutdown until it gets SIGKILLed.
  gcs=(); rest=()
  for p in "${pids[@]}"; do
    if [[ "$({ tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null || true)" == *gcs_server* ]]; then gcs+=("$p"); else rest+=("$p"); fi
  done
  echo "stopping ${#pids[@]} processes of the local cluster"
  stop_pids "${rest[@]}"
  stop_pids "${gcs[@]}"
fi

# The token is per-cluster: drop it with the cluster. RG_KEEP_LOGS=1 keeps the node logs.
rm -f "$RG_STATE_DIR/auth_token" "$RG_ENV_FILE" "$RG_STATE_DIR"/*.started
if [[ "${RG_KEEP_LOGS:-0}" != "1" ]]; then
  rm -rf "$RG_STATE_DIR"
fi
echo "local cluster stopped"
