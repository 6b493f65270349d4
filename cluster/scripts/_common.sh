# Shared helpers for cluster/scripts/*.sh. Sourced, never executed.
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# State for the local two-node cluster: per-node temp dirs, the auth token, the env file.
# Outside the repo so it never lands in a working_dir upload or a commit.
RG_STATE_DIR="${RG_STATE_DIR:-${TMPDIR:-/tmp}/reviewgen-ray-$(id -u)}"
RG_ENV_FILE="$RG_STATE_DIR/env.sh"

# Prefer the project venv; fall back to whatever is on PATH (a laptop talking to a real cluster).
if [[ -x "$REPO_ROOT/.venv/bin/ray" ]]; then
  RAY_BIN="${RAY_BIN:-$REPO_ROOT/.venv/bin/ray}"
  SERVE_BIN="${SERVE_BIN:-$REPO_ROOT/.venv/bin/serve}"
  RG_PYTHON="${RG_PYTHON:-$REPO_ROOT/.venv/bin/python}"
else
  RAY_BIN="${RAY_BIN:-ray}"
  SERVE_BIN="${SERVE_BIN:-serve}"
  RG_PYTHON="${RG_PYTHON:-python3}"
fi

die() { echo "error: $*" >&2; exit 1; }

# Pick the target cluster. A RAY_ADDRESS set by the caller means a real cluster (reached through
# `ray dashboard` / an SSH tunnel / a port-forward): use it with the caller's auth settings.
# Otherwise load the local cluster's env file written by cluster_up.sh.
load_target() {
  if [[ -n "${RAY_ADDRESS:-}" ]]; then
    RG_TARGET="remote"
    RG_JOBS_ADDRESS="${RAY_API_SERVER_ADDRESS:-$RAY_ADDRESS}"
    # A real cluster must run with token auth; refuse to send jobs to one we cannot authenticate to.
    export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
  else
    [[ -f "$RG_ENV_FILE" ]] || die "RAY_ADDRESS is not set and no local cluster env file at $RG_ENV_FILE (run cluster/scripts/cluster_up.sh first)"
    # shellcheck source=/dev/null
    source "$RG_ENV_FILE"
    RG_TARGET="local"
    RG_JOBS_ADDRESS="$RAY_API_SERVER_ADDRESS"
  fi
}

# Print a job's status (PENDING/RUNNING/SUCCEEDED/FAILED/STOPPED) or NONE if the id is unknown.
# Uses the SDK rather than parsing `ray job status` output, which is meant for humans.
job_status() {
  "$RG_PYTHON" - "$RG_JOBS_ADDRESS" "$1" <<'PY'
import sys
from ray.job_submission import JobSubmissionClient

address, job_id = sys.argv[1], sys.argv[2]
client = JobSubmissionClient(address)
try:
    print(client.get_job_status(job_id).value)
except RuntimeError as exc:  # the SDK raises RuntimeError("... does not exist") on 404
    if "status code 404" in str(exc):
        print("NONE")
    else:
        raise
PY
}
