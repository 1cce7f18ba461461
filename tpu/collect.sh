#!/usr/bin/env bash
# Copy a training workdir from the TPU VM (or its GCS bucket) to this machine.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
usage: $PROG NAME --workdir DIR --zone ZONE [--dest LOCAL] [options]

Copy DIR to LOCAL/<basename of DIR> (LOCAL defaults to ./runs).
  DIR gs://BUCKET/... or     -> gcloud storage cp -r gs://BUCKET/... LOCAL (NAME and zone
  /gcs/BUCKET/...               are then not needed; the TPU may already be deleted; the
                                workers' logs come along in DIR/logs)
  any other DIR              -> gcloud compute tpus tpu-vm scp --recurse from worker 0 (only
                                complete on a single-host slice: a multi-host job must use a
                                shared workdir)
  --workdir DIR          the --workdir given to launch.sh (required)
  --dest LOCAL           local parent directory (default ./runs)
  --project P, --zone Z  (env IFP_TPU_PROJECT, IFP_TPU_ZONE)
  --dry-run              print the commands, run nothing
USAGE
}

OPTS=(workdir dest)
WORKDIR='' DEST=runs
parse_args "$@"
check_workdir
((${#POSITIONAL[@]} <= 1)) || die "unexpected arguments: ${POSITIONAL[*]:1}"

gs=$(gs_url "$WORKDIR")
if [[ -n $gs ]]; then
  run mkdir -p "$DEST"
  run gcloud storage cp -r "$gs" "$DEST/" ${PROJECT:+--project "$PROJECT"}
else
  need_name
  need_zone
  loc
  run mkdir -p "$DEST"
  run gcloud compute tpus tpu-vm scp --recurse "$NAME:$WORKDIR" "$DEST/" "${LOC[@]}" --worker=0
fi
((DRY_RUN)) || note "copied to $DEST/$(basename "$WORKDIR")"
