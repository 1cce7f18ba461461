#!/usr/bin/env bash
# Follow the training log that launch.sh writes on a worker (or on all of them).
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
usage: $PROG NAME --zone ZONE [--worker N | --all] [options]

Follow ~/ifp_logs/latest.log (the last launch.sh run) on worker 0. Ctrl-C stops following;
the job keeps running.
  --worker N             follow worker N instead of 0
  --all                  follow every worker, lines prefixed with the worker's hostname
  --run RUN              read ~/ifp_logs/RUN.log instead of the latest run
  --lines N              start with the last N lines (default 100)
  --no-follow            print the last lines and return
  --project P, --zone Z  (env IFP_TPU_PROJECT, IFP_TPU_ZONE)
  --dry-run              print the gcloud command, run nothing
USAGE
}

FLAGS=(all no-follow)
OPTS=(worker run lines)
WORKER=0 ALL=0 RUN=latest LINES=100 NO_FOLLOW=0
parse_args "$@"
need_name
((${#POSITIONAL[@]} == 1)) || die "unexpected arguments: ${POSITIONAL[*]:1}"
need_zone
[[ $WORKER =~ ^[0-9]+$ ]] || die "bad --worker '$WORKER': pass a worker index, e.g. --worker 0"
[[ $LINES =~ ^[0-9]+$ ]] || die "bad --lines '$LINES': pass a number, e.g. --lines 100"
[[ $RUN =~ ^[A-Za-z0-9._-]+$ ]] || die "bad --run '$RUN': pass the run name launch.sh used"
loc

tail_cmd="tail -n $LINES -F $REMOTE_LOGS/$RUN.log"
((!NO_FOLLOW)) || tail_cmd="tail -n $LINES $REMOTE_LOGS/$RUN.log"
if ((ALL)); then
  tpu_ssh all "$tail_cmd 2>&1 | sed -u \"s/^/[\$(hostname)] /\""
elif ((NO_FOLLOW)); then
  tpu_ssh "$WORKER" "$tail_cmd"
else
  tpu_ssh "$WORKER" "$tail_cmd" --ssh-flag=-t   # a tty, so Ctrl-C also stops the remote tail
fi
