#!/usr/bin/env bash
# Delete the TPU VM (or the queued resource and its TPU VM). Workdirs on GCS are kept.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
usage: $PROG NAME --zone ZONE [--queued [--qr-id ID]] [options]

Delete TPU VM NAME without prompting. Anything only on the workers' disks (logs in ~/ifp_logs,
a non-GCS workdir) is lost: run collect.sh first.
  --queued               delete the queued resource instead (--force: its TPU VM too)
  --qr-id ID             queued resource id (default: NAME, as in create.sh)
  --project P, --zone Z  (env IFP_TPU_PROJECT, IFP_TPU_ZONE)
  --dry-run              print the gcloud command, run nothing
USAGE
}

FLAGS=(queued)
OPTS=(qr-id)
QUEUED=0 QR_ID=''
parse_args "$@"
need_name
((${#POSITIONAL[@]} == 1)) || die "unexpected arguments: ${POSITIONAL[*]:1}"
need_zone
loc

if ((QUEUED)); then
  run gcloud compute tpus queued-resources delete "${QR_ID:-$NAME}" "${LOC[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${LOC[@]}" --quiet
fi
