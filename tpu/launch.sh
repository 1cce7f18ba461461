#!/usr/bin/env bash
# Start `ifp train` on every worker of a TPU VM at once, detached from the ssh session.
# shellcheck source-path=SCRIPTDIR source=common.sh disable=SC2016
# (SC2016: the wrapper's lines in single quotes are expanded by the worker's shell)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
usage: $PROG NAME EXPERIMENT --workdir DIR --zone ZONE [section.key=value ...] [options]
       $PROG NAME --stop --zone ZONE

Run \`ifp train EXPERIMENT --workdir DIR [overrides]\` on all workers, detached (setsid nohup),
logging to ~/ifp_logs/RUN.log on each worker (~/ifp_logs/latest.log points at it). When it
ends, its exit code is written to ~/ifp_logs/RUN.exit (0: all steps done; 75: stopped by
SIGTERM/preemption after a checkpoint, rerun to resume; else failed). Each process initialises
jax.distributed itself. DIR must be shared by all workers: gs://BUCKET/RUN, or /gcs/BUCKET/RUN
from setup.sh --bucket. Rerunning with the same DIR resumes from its latest checkpoint.
  --workdir DIR          training workdir (required): gs://BUCKET/RUN or an absolute path
  --run RUN              log name (default: basename of DIR)
  --env KEY=VALUE        set an environment variable for ifp train (repeatable), e.g.
                         --env LIBTPU_INIT_ARGS='--xla_tpu_enable_async_all_gather=true'
  --logs-to gs://B/P     copy every worker's log to gs://B/P/<hostname>.log every
                         --logs-every seconds (default 60) and when the job ends (default:
                         DIR/logs when DIR is gs://BUCKET/... or /gcs/BUCKET/...)
  --profile-steps A:B    write a jax.profiler trace of steps A..B-1 under DIR/profile
  --stop                 send SIGTERM to the running job (it saves a checkpoint, then exits)
  --project P, --zone Z  (env IFP_TPU_PROJECT, IFP_TPU_ZONE)
  --dry-run              print the gcloud command, run nothing
USAGE
}

FLAGS=(stop)
OPTS=(workdir run profile-steps logs-to logs-every)
LISTS=(env)
WORKDIR='' RUN='' PROFILE_STEPS='' STOP=0 LOGS_TO='' LOGS_EVERY=60 ENV_LIST=()
parse_args "$@"
need_name
need_zone
loc
pidfile="$REMOTE_LOGS/latest.pid"

if ((STOP)); then
  ((${#POSITIONAL[@]} == 1)) || die "--stop takes only NAME: $PROG NAME --stop --zone ZONE"
  tpu_ssh all "if [ -f $pidfile ] && [ ! -e $REMOTE_LOGS/latest.exit ] && kill -0 \"\$(cat $pidfile)\" 2>/dev/null; then \
kill -TERM \"\$(cat $pidfile)\" && echo \"\$(hostname): sent SIGTERM to \$(cat $pidfile)\"; \
else echo \"\$(hostname): no ifp train running\"; fi"
  exit 0
fi

((${#POSITIONAL[@]} >= 2)) || die "missing EXPERIMENT: $PROG NAME EXPERIMENT --workdir DIR (see \`ifp list\`)"
EXPERIMENT=${POSITIONAL[1]}
OVERRIDES=("${POSITIONAL[@]:2}")
check_workdir
for o in "${OVERRIDES[@]}"; do
  [[ $o == *=* ]] || die "bad override '$o': overrides look like section.key=value"
done
for e in "${ENV_LIST[@]}"; do
  [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= && $e != *$'\n'* ]] \
    || die "bad --env '${e%%$'\n'*}': use --env KEY=VALUE (one line; KEY of letters, digits, '_'), e.g. --env XLA_FLAGS='--xla_dump_to=/tmp/x'"
done
if [[ -n $PROFILE_STEPS ]]; then
  if ! [[ $PROFILE_STEPS =~ ^([0-9]+):([0-9]+)$ ]] \
    || ((10#${BASH_REMATCH[1]} < 1 || 10#${BASH_REMATCH[1]} >= 10#${BASH_REMATCH[2]})); then
    die "bad --profile-steps '$PROFILE_STEPS': use A:B with 1 <= A < B, e.g. 10:15"
  fi
fi
RUN=${RUN:-$(basename "$WORKDIR")}
[[ $RUN =~ ^[A-Za-z0-9._-]+$ ]] || die "bad run name '$RUN': pass --run NAME with letters, digits, '.', '_', '-'"
if [[ -z $LOGS_TO ]]; then
  gs=$(gs_url "$WORKDIR")
  [[ -z $gs ]] || LOGS_TO=$gs/logs
fi
LOGS_TO=${LOGS_TO%/}
[[ -z $LOGS_TO || ($LOGS_TO =~ $GS_BUCKET_RE(/|$) && $LOGS_TO != *$'\n'*) ]] \
  || die "bad --logs-to '$LOGS_TO': pass a bucket folder, e.g. --logs-to gs://BUCKET/RUN/logs"
[[ $LOGS_EVERY =~ ^[1-9][0-9]*$ ]] || die "bad --logs-every '$LOGS_EVERY': pass whole seconds, e.g. --logs-every 60"

train=("$REMOTE_VENV/bin/ifp" train "$EXPERIMENT" --workdir "$WORKDIR")
[[ -z $PROFILE_STEPS ]] || train+=(--profile-steps "$PROFILE_STEPS")
train+=("${OVERRIDES[@]}")
L="$REMOTE_LOGS/$RUN"   # ~/ifp_logs/RUN: .log, .pid (the wrapper), .exit, .sh (the wrapper)

# The wrapper each worker runs detached: ifp train with the --env variables, SIGTERM passed on
# to it, the log copied to the bucket, and the exit code recorded (after the last copy, so a
# reader of RUN.exit finds the full log in the bucket).
w=("# written by tpu/launch.sh: ifp train for run $RUN; its exit code goes to $L.exit")
w+=("cd $REMOTE_SRC || exit 1")
for e in "${ENV_LIST[@]}"; do w+=("export ${e%%=*}=$(quote "${e#*=}")"); done
# Quote the user's words for the worker's shell; leave the tilde bare so the worker expands it.
w+=("${train[0]} $(quote "${train[@]:1}") &")
w+=('child=$!')
w+=("trap 'kill -TERM \"\$child\" 2>/dev/null' TERM INT HUP")
if [[ -n $LOGS_TO ]]; then
  w+=("upload() { cp $L.log $L.log.up && gcloud storage cp $L.log.up $(quote "$LOGS_TO")/\"\$(hostname)\".log >$L.upload.log 2>&1; }")
  w+=("while sleep $LOGS_EVERY; do upload; done &")
  w+=('uploader=$!')
fi
w+=('while kill -0 "$child" 2>/dev/null; do wait "$child"; done')
w+=('wait "$child"; code=$?')
w+=('echo "[tpu/launch.sh] $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): ifp train exited with $code"')
[[ -z $LOGS_TO ]] || w+=('kill "$uploader" 2>/dev/null; upload')
w+=("echo \"\$code\" > $L.exit.tmp && mv -f $L.exit.tmp $L.exit")
w+=('exit "$code"')

# A job is running if its wrapper is alive and has not yet recorded an exit code (it lives on
# for a moment after that).
tpu_ssh all "set -uo pipefail; mkdir -p $REMOTE_LOGS; \
if [ -f $pidfile ] && [ ! -e $REMOTE_LOGS/latest.exit ] && kill -0 \"\$(cat $pidfile)\" 2>/dev/null; then \
echo \"\$(hostname): ifp train already running (pid \$(cat $pidfile)); stop it: tpu/launch.sh $NAME --stop\" >&2; exit 1; fi; \
cd $REMOTE_SRC || exit 1; rm -f $L.exit; printf '%s\n' $(quote "${w[@]}") > $L.sh; \
setsid nohup bash $L.sh >> $L.log 2>&1 < /dev/null & \
echo \$! > $L.pid; ln -sfn $RUN.log $REMOTE_LOGS/latest.log; ln -sfn $RUN.pid $pidfile; ln -sfn $RUN.exit $REMOTE_LOGS/latest.exit; \
echo \"\$(hostname): started pid \$! -> $L.log\""
((DRY_RUN)) || note "follow it: tpu/logs.sh $NAME --zone $ZONE${LOGS_TO:+ (logs also copied to $LOGS_TO/)}"
