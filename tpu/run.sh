#!/usr/bin/env bash
# Run an `ifp train` job to the end on queued-resource slices: create, set up, launch, watch;
# when the slice is preempted, delete it and start over (the job resumes from its workdir).
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
usage: $PROG NAME EXPERIMENT --workdir gs://BUCKET/RUN --accelerator-type TYPE --zone ZONE
          [section.key=value ...] [options]

Run from your machine until \`ifp train\` has done all its steps. Each attempt: create the
queued resource NAME (create.sh --no-wait) and wait until ACTIVE, setup.sh, launch.sh, then
every --poll seconds read the job's exit code on worker 0 (~/ifp_logs/RUN.exit) and the queued
resource's state:
  exit 0                        done: delete the slice (unless --keep), exit 0
  exit 75, or the slice is      preempted: delete the queued resource, wait (--backoff), next
  SUSPENDING/SUSPENDED/FAILED   attempt (resumes from the latest checkpoint in the workdir)
  any other exit code           failed: delete the slice (unless --keep), print where the logs
                                are, exit 1
A queued resource NAME that already exists is reused (a job still running on it is watched,
not relaunched), so rerunning run.sh after Ctrl-C picks up where it was.
  --workdir gs://BUCKET/RUN  training workdir (required; it must outlive every slice)
  --accelerator-type TYPE, --runtime VERSION, --spot | --reserved, --qr-id ID
                             the slice, as in create.sh (default: on-demand)
  --run RUN, --env KEY=VALUE (repeatable), --logs-to gs://B/P, --logs-every S, --profile-steps A:B
                             the job, as in launch.sh (logs: default gs://BUCKET/RUN/logs)
  --bucket B, --git-url URL, --git-ref REF, --python V
                             the workers, as in setup.sh
  --max-attempts N           give up after N slices (default 10)
  --backoff SECONDS          pause before a new attempt: SECONDS, doubled each time, at most
                             1800 (default 60)
  --poll SECONDS             how often to check (default 60, env IFP_TPU_POLL_SECONDS)
  --timeout SECONDS          per attempt, give up waiting for ACTIVE after this long (default
                             0: wait as long as the queue takes)
  --keep                     leave the slice up when the loop ends (delete: teardown.sh NAME)
  --project P, --zone Z      (env IFP_TPU_PROJECT, IFP_TPU_ZONE)
  --dry-run                  print the commands of one attempt, run nothing
USAGE
}

FLAGS=(spot reserved keep)
OPTS=(workdir accelerator-type runtime qr-id run logs-to logs-every profile-steps bucket git-url
  git-ref python max-attempts backoff poll timeout)
LISTS=(env)
WORKDIR='' ACCELERATOR_TYPE='' RUNTIME='' QR_ID='' RUN='' LOGS_TO='' LOGS_EVERY='' PROFILE_STEPS=''
BUCKET='' GIT_URL='' GIT_REF='' PYTHON='' MAX_ATTEMPTS=10 BACKOFF=60 POLL=${IFP_TPU_POLL_SECONDS:-60}
TIMEOUT=0 SPOT=0 RESERVED=0 KEEP=0 ENV_LIST=()
parse_args "$@"
need_name
need_zone
((${#POSITIONAL[@]} >= 2)) || die "missing EXPERIMENT: $PROG NAME EXPERIMENT --workdir gs://BUCKET/RUN (see \`ifp list\`)"
check_workdir
[[ $WORKDIR == gs://* ]] || die "--workdir must be gs://BUCKET/RUN: the workdir must outlive each slice"
[[ -n $ACCELERATOR_TYPE ]] || die "missing --accelerator-type TYPE (e.g. v5p-128, v5litepod-256, v4-64, v6e-16)"
for v in MAX_ATTEMPTS BACKOFF POLL TIMEOUT; do
  opt=${v,,}; [[ ${!v} =~ ^[0-9]+$ ]] || die "bad --${opt//_/-} '${!v}': pass a whole number"
done
((MAX_ATTEMPTS >= 1)) || die "bad --max-attempts 0: pass at least 1"
RUN=${RUN:-$(basename "$WORKDIR")}
QR_ID=${QR_ID:-$NAME}
loc

# The three scripts, with the options given here that belong to each.
common=("$NAME" --zone "$ZONE")
[[ -z $PROJECT ]] || common+=(--project "$PROJECT")
((!DRY_RUN)) || common+=(--dry-run)
create=("$TPU_DIR/create.sh" "${common[@]}" --accelerator-type "$ACCELERATOR_TYPE" --qr-id "$QR_ID" --no-wait)
[[ -z $RUNTIME ]] || create+=(--runtime "$RUNTIME")
((!SPOT)) || create+=(--spot)
((!RESERVED)) || create+=(--reserved)
setup=("$TPU_DIR/setup.sh" "${common[@]}")
[[ -z $BUCKET ]] || setup+=(--bucket "$BUCKET")
[[ -z $GIT_URL ]] || setup+=(--git-url "$GIT_URL")
[[ -z $GIT_REF ]] || setup+=(--git-ref "$GIT_REF")
[[ -z $PYTHON ]] || setup+=(--python "$PYTHON")
launch=("$TPU_DIR/launch.sh" "${common[@]}" "${POSITIONAL[@]:1}" --workdir "$WORKDIR" --run "$RUN")
[[ -z $LOGS_TO ]] || launch+=(--logs-to "$LOGS_TO")
[[ -z $LOGS_EVERY ]] || launch+=(--logs-every "$LOGS_EVERY")
[[ -z $PROFILE_STEPS ]] || launch+=(--profile-steps "$PROFILE_STEPS")
for e in "${ENV_LIST[@]}"; do launch+=(--env "$e"); done
teardown=("$TPU_DIR/teardown.sh" "${common[@]}" --qr-id "$QR_ID")
qr_describe "$QR_ID"
status=(gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker=0 --command "$(status_cmd "$RUN")")
logs_at=${LOGS_TO:-$WORKDIR/logs}

# Reject bad options of the other scripts now (one line, exit 2), not after a slice is up.
for s in create setup launch; do
  declare -n cmd=$s
  err=$("${cmd[@]}" --dry-run 2>&1 >/dev/null) || { echo "${err//${s}.sh/run.sh}" >&2; exit 2; }
  unset -n cmd
done

if ((DRY_RUN)); then   # one attempt, in order; the real loop repeats the polls and attempts
  "${create[@]}"
  run "${QR_DESCRIBE[@]}"
  "${setup[@]}"
  "${launch[@]}"
  run "${status[@]}"
  run "${QR_DESCRIBE[@]}"
  "${teardown[@]}"
  exit 0
fi

trap 'note "interrupted: the slice and its job keep running; rerun this command to watch it again, or delete it: tpu/teardown.sh $NAME --zone $ZONE"; exit 130' INT

qr_state() { "${QR_DESCRIBE[@]}" 2>/dev/null || true; }

# The job on worker 0: prints `exit N`, `running`, `gone`, or nothing when ssh fails.
job_status() {
  local out
  out=$("${status[@]}" 2>/dev/null) || true
  grep -Ex 'exit -?[0-9]+|running|gone' <<<"$out" | tail -n 1 || true
}

# Wait until the queued resource is ACTIVE (0) or lost (1).
wait_active() {
  local state deadline=$((SECONDS + TIMEOUT))
  while :; do
    state=$(qr_state)
    case $state in
      ACTIVE) note "queued resource $QR_ID is ACTIVE"; return 0 ;;
      FAILED|SUSPENDING|SUSPENDED) note "queued resource $QR_ID is $state"; return 1 ;;
    esac
    if ((TIMEOUT && SECONDS >= deadline)); then note "still ${state:-unknown} after ${TIMEOUT}s"; return 1; fi
    note "queued resource $QR_ID: ${state:-unknown}; next check in ${POLL}s"
    sleep "$POLL"
  done
}

finish() {   # finish CODE MESSAGE: end the loop, deleting the slice unless --keep
  if ((KEEP)); then note "the slice is kept (--keep): tpu/teardown.sh $NAME --zone $ZONE"
  else "${teardown[@]}" || note "could not delete queued resource $QR_ID: tpu/teardown.sh $NAME --zone $ZONE"
  fi
  note "$2"
  exit "$1"
}

attempt=0
while :; do
  attempt=$((attempt + 1))
  ((attempt <= MAX_ATTEMPTS)) || fail "gave up after $MAX_ATTEMPTS attempts (--max-attempts); logs: $logs_at/"
  note "attempt $attempt/$MAX_ATTEMPTS"
  attach=0
  state=$(qr_state)
  case $state in
    '') "${create[@]}" || fail "could not create queued resource $QR_ID (see above)" ;;
    FAILED|SUSPENDING|SUSPENDED|DELETING)
      note "queued resource $QR_ID is $state: deleting it"
      "${teardown[@]}" || true
      "${create[@]}" || fail "could not create queued resource $QR_ID (see above)" ;;
    *) note "queued resource $QR_ID exists ($state): using it" ;;
  esac
  lost=0
  if wait_active; then
    if [[ -n $state && $(job_status) == running ]]; then
      note "ifp train is already running on $NAME: watching it"; attach=1
    fi
    if ((!attach)) && ! { "${setup[@]}" && "${launch[@]}"; }; then
      [[ $(qr_state) == ACTIVE ]] || lost=1
      ((lost)) || finish 1 "setup.sh or launch.sh failed on an ACTIVE slice (see above)"
    fi
    ssh_failures=0
    while ((!lost)); do
      sleep "$POLL"
      job=$(job_status)
      case $job in
        'exit 0') finish 0 "done: ifp train completed on attempt $attempt; workdir $WORKDIR, logs $logs_at/" ;;
        'exit 75') note "ifp train stopped for a preemption (exit 75) after saving a checkpoint"; lost=1 ;;
        exit*) finish 1 "ifp train failed (${job}) on attempt $attempt; logs: $logs_at/ (worker 0: $logs_at/<hostname>.log; on the slice: tpu/logs.sh $NAME --all --no-follow)" ;;
      esac
      ((lost)) && break
      state=$(qr_state)
      if [[ $state != ACTIVE ]]; then note "queued resource $QR_ID is ${state:-gone}: preempted"; lost=1; break; fi
      case $job in
        running) ssh_failures=0 ;;
        gone) note "ifp train is gone from worker 0 without an exit code (worker restarted?)"; lost=1 ;;
        *) ssh_failures=$((ssh_failures + 1))
           note "could not read the job's state on worker 0 ($ssh_failures/5)"
           ((ssh_failures < 5)) || lost=1 ;;
      esac
    done
  fi
  note "deleting queued resource $QR_ID; the next attempt resumes from $WORKDIR"
  "${teardown[@]}" || note "could not delete queued resource $QR_ID (will check again)"
  delay=$((BACKOFF * (1 << (attempt - 1 < 5 ? attempt - 1 : 5))))
  ((delay <= 1800)) || delay=1800
  ((attempt >= MAX_ATTEMPTS)) || { note "next attempt in ${delay}s"; sleep "$delay"; }
done
