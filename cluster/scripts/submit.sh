#!/usr/bin/env bash
# Submit a reviewgen job to the cluster and exit with the job's outcome.
#
#   submit.sh train    [ARGS...]              python jobs/train.py ARGS          (id train-<UTC time>)
#   submit.sh generate [ARGS...]              python jobs/generate.py ARGS       (id generate-<UTC time>)
#   submit.sh nightly  YYYY-MM-DD [ARGS...]   python jobs/generate.py --run-date YYYY-MM-DD ARGS
#                                             (id nightly-YYYYMMDD: at most one run per date)
#   submit.sh raw      SUBMISSION_ID -- CMD...   any entrypoint (smoke tests)
#
# Target: $RAY_ADDRESS if set (a real cluster, e.g. through `ray dashboard` or an SSH tunnel;
# token from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token), else the local
# cluster's env file from cluster_up.sh.
# Env: RG_RUNTIME_ENV (default cluster/runtime_env.yaml), RG_NO_WAIT=1 (submit and return),
#      RG_RERUN_FAILED=1 (nightly: delete a FAILED/STOPPED run of that date and submit again).
# Paths in ARGS must be absolute or URIs: the job runs from a copy of the working dir inside
# Ray's session dir, so relative outputs would vanish with it.
set -euo pipefail
# shellcheck source=cluster/scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
(( $# >= 1 )) || usage
kind="$1"; shift
now="$(date -u +%Y%m%d-%H%M%S)"

case "$kind" in
  train)    submission_id="train-$now";    entry=(python jobs/train.py "$@") ;;
  generate) submission_id="generate-$now"; entry=(python jobs/generate.py "$@") ;;
  nightly)
    (( $# >= 1 )) || die "nightly needs a date: submit.sh nightly YYYY-MM-DD [ARGS...]"
    run_date="$1"; shift
    [[ "$run_date" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] && date -u -d "$run_date" +%F >/dev/null 2>&1 \
      || die "nightly date must be a real YYYY-MM-DD date, got '$run_date'"
    # The id is a pure function of the date: a second submission for the same date is refused
    # by Ray itself (submission ids are unique), so a retried cron cannot run a date twice.
    submission_id="nightly-${run_date//-/}"
    entry=(python jobs/generate.py --run-date "$run_date" "$@")
    ;;
  raw)
    (( $# >= 3 )) && [[ "$2" == "--" ]] || die "usage: submit.sh raw SUBMISSION_ID -- CMD..."
    submission_id="$1"; shift 2
    entry=("$@")
    ;;
  *) usage ;;
esac

load_target
cd "$REPO_ROOT"
runtime_env="${RG_RUNTIME_ENV:-cluster/runtime_env.yaml}"
[[ -f "$runtime_env" ]] || die "runtime env file not found: $runtime_env"

status="$(job_status "$submission_id")"
if [[ "$status" != "NONE" ]]; then
  if [[ "$kind" == "nightly" && "${RG_RERUN_FAILED:-0}" == "1" && ( "$status" == "FAILED" || "$status" == "STOPPED" ) ]]; then
    echo "job $submission_id exists with status $status; RG_RERUN_FAILED=1: deleting it and submitting again"
    "$RAY_BIN" job delete --address "$RG_JOBS_ADDRESS" "$submission_id"
  else
    echo "job $submission_id already exists (status: $status); not submitting again"
    exit 0
  fi
fi

echo "submitting $submission_id to $RG_JOBS_ADDRESS ($RG_TARGET cluster): ${entry[*]}"
wait_flag=()
[[ "${RG_NO_WAIT:-0}" == "1" ]] && wait_flag=(--no-wait)
set +e
"$RAY_BIN" job submit --address "$RG_JOBS_ADDRESS" --submission-id "$submission_id" \
  --runtime-env "$runtime_env" --working-dir . "${wait_flag[@]}" -- "${entry[@]}"
rc=$?
set -e
if (( rc != 0 )); then
  # A concurrent submitter may have won the race for this id: that is success for us.
  status="$(job_status "$submission_id" || echo NONE)"
  if [[ "$kind" == "nightly" && "$status" != "NONE" && "$status" != "FAILED" ]]; then
    echo "job $submission_id was submitted concurrently (status: $status)"
    exit 0
  fi
  echo "job $submission_id: ray job submit exited $rc (status: $status)" >&2
  exit "$rc"
fi
[[ "${RG_NO_WAIT:-0}" == "1" ]] && exit 0

# `ray job submit` exits 0 for a STOPPED job; only SUCCEEDED counts as success here.
status="$(job_status "$submission_id")"
echo "job $submission_id finished with status $status"
[[ "$status" == "SUCCEEDED" ]]
