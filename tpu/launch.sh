#!/usr/bin/env bash
# Start `ifp train` on every worker of a TPU VM at once, detached from the ssh session.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
usage: $PROG NAME EXPERIMENT --workdir DIR --zone ZONE [section.key=value ...] [options]
       $PROG NAME --stop --zone ZONE

Run \`ifp train EXPERIMENT --workdir DIR [overrides]\` on all workers, detached (setsid nohup),
logging to ~/ifp_logs/RUN.log on each worker (~/ifp_logs/latest.log points at it). Each
process initialises jax.distributed itself. DIR must be shared by all workers (e.g.
/gcs/BUCKET/RUN from setup.sh --bucket). Rerunning with the same DIR resumes from its latest
checkpoint.
  --workdir DIR          training workdir (required)
  --run RUN              log name (default: basename of DIR)
  --profile-steps A:B    write a jax.profiler trace of steps A..B-1 under DIR/profile
  --stop                 send SIGTERM to the running job (it saves a checkpoint, then exits)
  --project P, --zone Z  (env IFP_TPU_PROJECT, IFP_TPU_ZONE)
  --dry-run              print the gcloud command, run nothing
USAGE
}

FLAGS=(stop)
OPTS=(workdir run profile-steps)
WORKDIR='' RUN='' PROFILE_STEPS='' STOP=0
parse_args "$@"
need_name
need_zone
loc
pidfile="$REMOTE_LOGS/latest.pid"

if ((STOP)); then
  ((${#POSITIONAL[@]} == 1)) || die "--stop takes only NAME: $PROG NAME --stop --zone ZONE"
  tpu_ssh all "if [ -f $pidfile ] && kill -0 \"\$(cat $pidfile)\" 2>/dev/null; then \
kill -TERM \"\$(cat $pidfile)\" && echo \"\$(hostname): sent SIGTERM to \$(cat $pidfile)\"; \
else echo \"\$(hostname): no ifp train running\"; fi"
  exit 0
fi

((${#POSITIONAL[@]} >= 2)) || die "missing EXPERIMENT: $PROG NAME EXPERIMENT --workdir DIR (see \`ifp list\`)"
EXPERIMENT=${POSITIONAL[1]}
OVERRIDES=("${POSITIONAL[@]:2}")
[[ -n $WORKDIR ]] || die "missing --workdir DIR: use a directory all workers see, e.g. /gcs/BUCKET/run1"
[[ $WORKDIR == /* ]] || die "--workdir must be an absolute path every worker sees, e.g. /gcs/BUCKET/run1"
for o in "${OVERRIDES[@]}"; do
  [[ $o == *=* ]] || die "bad override '$o': overrides look like section.key=value"
done
if [[ -n $PROFILE_STEPS ]]; then
  if ! [[ $PROFILE_STEPS =~ ^([0-9]+):([0-9]+)$ ]] \
    || ((10#${BASH_REMATCH[1]} < 1 || 10#${BASH_REMATCH[1]} >= 10#${BASH_REMATCH[2]})); then
    die "bad --profile-steps '$PROFILE_STEPS': use A:B with 1 <= A < B, e.g. 10:15"
  fi
fi
RUN=${RUN:-$(basename "$WORKDIR")}
[[ $RUN =~ ^[A-Za-z0-9._-]+$ ]] || die "bad run name '$RUN': pass --run NAME with letters, digits, '.', '_', '-'"

train=("$REMOTE_VENV/bin/ifp" train "$EXPERIMENT" --workdir "$WORKDIR")
[[ -z $PROFILE_STEPS ]] || train+=(--profile-steps "$PROFILE_STEPS")
train+=("${OVERRIDES[@]}")
# Quote the user's words for the remote shell; leave the tilde bare so the worker expands it.
train_cmd="${train[0]} $(quote "${train[@]:1}")"
log="$REMOTE_LOGS/$RUN.log"

tpu_ssh all "set -uo pipefail; mkdir -p $REMOTE_LOGS; \
if [ -f $pidfile ] && kill -0 \"\$(cat $pidfile)\" 2>/dev/null; then \
echo \"\$(hostname): ifp train already running (pid \$(cat $pidfile)); stop it: tpu/launch.sh $NAME --stop\" >&2; exit 1; fi; \
cd $REMOTE_SRC || exit 1; setsid nohup $train_cmd >> $log 2>&1 < /dev/null & \
echo \$! > $REMOTE_LOGS/$RUN.pid; ln -sfn $RUN.log $REMOTE_LOGS/latest.log; ln -sfn $RUN.pid $pidfile; \
echo \"\$(hostname): started pid \$! -> $log\""
((DRY_RUN)) || note "follow it: tpu/logs.sh $NAME --zone $ZONE"
