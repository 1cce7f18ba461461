#!/usr/bin/env bash
# Delete the queued resource and its TPU VM (or, with --direct, a plain TPU VM). Workdirs on
# GCS are kept.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
usage: $PROG NAME --zone ZONE [--qr-id ID | --direct] [options]

Delete the queued resource NAME and its TPU VM (--force) without prompting. Anything only on
the workers' disks (logs in ~/ifp_logs, a non-GCS workdir) is lost: run collect.sh first.
  --qr-id ID             queued resource id (default: NAME, as in create.sh)
  --direct | --no-queued delete a TPU VM made with create.sh --direct
  --project P, --zone Z  (env IFP_TPU_PROJECT, IFP_TPU_ZONE)
  --dry-run              print the gcloud command, run nothing
USAGE
}

FLAGS=(queued direct no-queued)
OPTS=(qr-id)
QUEUED=0 DIRECT=0 NO_QUEUED=0 QR_ID=''
parse_args "$@"
need_name
((${#POSITIONAL[@]} == 1)) || die "unexpected arguments: ${POSITIONAL[*]:1}"
need_zone
if ((DIRECT || NO_QUEUED)); then
  ((!QUEUED)) || die "--queued and --direct exclude each other: pick one (queued is the default)"
else
  QUEUED=1   # the default; --queued is accepted for older command lines
fi
loc

if ((QUEUED)); then
  run gcloud compute tpus queued-resources delete "${QR_ID:-$NAME}" "${LOC[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${LOC[@]}" --quiet
fi
