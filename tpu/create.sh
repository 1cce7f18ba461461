#!/usr/bin/env bash
# Create a Cloud TPU slice as a queued resource (or, with --direct, a plain TPU VM) and wait
# until it is ACTIVE / READY.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
usage: $PROG NAME --accelerator-type TYPE --zone ZONE [options]

Create the TPU VM NAME (all workers of a pod slice) through a queued resource (it waits in
the queue until capacity is free) and wait until it is usable.
  --accelerator-type TYPE  v4-N, v5p-N, v5litepod-N (v5e-N accepted), v6e-N; e.g. v5p-128
  --runtime VERSION        TPU runtime (default per generation: v4 tpu-ubuntu2204-base,
                           v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  (default)                on-demand capacity: full price, not preempted
  --spot                   Spot capacity: much cheaper, can be preempted at any time
  --reserved               your project's reservation (queued resources only)
  --preemptible            legacy preemptible TPU: cheaper, preempted at any time and after
                           24 h at the latest (--direct only)
  --direct | --no-queued   create the TPU VM directly (\`tpu-vm create\`, no queue: fails when
                           there is no capacity right now)
  --qr-id ID               queued resource id (default: NAME)
  --timeout SECONDS        give up waiting after this long (default 3600; polls every 30s,
                           env IFP_TPU_POLL_SECONDS)
  --no-wait                return right after the create request
  --project P, --zone Z    (env IFP_TPU_PROJECT, IFP_TPU_ZONE)
  --dry-run                print the gcloud commands, run nothing
USAGE
}

FLAGS=(spot preemptible reserved queued direct no-queued no-wait)
OPTS=(accelerator-type runtime qr-id timeout)
ACCELERATOR_TYPE='' RUNTIME='' QR_ID='' TIMEOUT=3600 SPOT=0 PREEMPTIBLE=0 RESERVED=0
QUEUED=0 DIRECT=0 NO_QUEUED=0 NO_WAIT=0
parse_args "$@"
need_name
((${#POSITIONAL[@]} == 1)) || die "unexpected arguments: ${POSITIONAL[*]:1}"
need_zone
[[ -n $ACCELERATOR_TYPE ]] || die "missing --accelerator-type TYPE (e.g. v5p-128, v5litepod-256, v4-64, v6e-16)"

TYPE=$ACCELERATOR_TYPE
[[ $TYPE =~ ^v5e-([0-9]+)$ ]] && TYPE="v5litepod-${BASH_REMATCH[1]}"
[[ $TYPE =~ ^(v4|v5litepod|v5p|v6e)-[0-9]+$ ]] \
  || die "unknown accelerator type '$ACCELERATOR_TYPE': use v4-N, v5p-N, v5litepod-N (or v5e-N), v6e-N, e.g. v5p-128"
case ${BASH_REMATCH[1]} in
  v4) default_runtime=tpu-ubuntu2204-base ;;
  v5litepod) default_runtime=v2-alpha-tpuv5-lite ;;
  v5p) default_runtime=v2-alpha-tpuv5 ;;
  v6e) default_runtime=v2-alpha-tpuv6e ;;
esac
RUNTIME=${RUNTIME:-$default_runtime}
if ((DIRECT || NO_QUEUED)); then
  ((!QUEUED)) || die "--queued and --direct exclude each other: pick one (queued is the default)"
else
  QUEUED=1   # the default; --queued is accepted for older command lines
fi
((SPOT + PREEMPTIBLE + RESERVED <= 1)) || die "--spot, --preemptible and --reserved exclude each other: pick one"
((QUEUED && PREEMPTIBLE)) && die "queued resources take --spot, not --preemptible (or add --direct)"
((!QUEUED && RESERVED)) && die "--reserved needs a queued resource: drop --direct"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout wants whole seconds, e.g. --timeout 3600"
QR_ID=${QR_ID:-$NAME}
loc

# Poll a `describe --format=value(...)` command until it prints $1 or a terminal state.
wait_for() {
  local want=$1; shift
  if ((DRY_RUN)); then run "$@"; return 0; fi
  local deadline=$((SECONDS + TIMEOUT)) state POLL=${IFP_TPU_POLL_SECONDS:-30}
  ERR_FILE=$(mktemp); trap 'rm -f "$ERR_FILE"' EXIT
  note "waiting up to ${TIMEOUT}s for $want"
  while :; do
    if ! state=$("$@" 2>"$ERR_FILE"); then state=; note "describe failed: $(head -n 1 "$ERR_FILE")"; fi
    case $state in
      "$want") note "$want"; return 0 ;;
      FAILED|SUSPENDED|SUSPENDING|PREEMPTED|TERMINATED) fail "state $state; inspect with: $(quote "${@:1:$#-1}")" ;;
    esac
    ((SECONDS < deadline)) || fail "still ${state:-unknown} after ${TIMEOUT}s; check later with: $(quote "${@:1:$#-1}")"
    note "state ${state:-unknown}; next check in ${POLL}s"
    sleep "$POLL"
  done
}

if ((QUEUED)); then
  extra=(); ((SPOT)) && extra+=(--spot); ((RESERVED)) && extra+=(--reserved)
  run gcloud compute tpus queued-resources create "$QR_ID" "${LOC[@]}" --node-id "$NAME" \
    --accelerator-type "$TYPE" --runtime-version "$RUNTIME" "${extra[@]}"
  ((NO_WAIT)) || wait_for ACTIVE gcloud compute tpus queued-resources describe "$QR_ID" "${LOC[@]}" '--format=value(state.state)'
else
  extra=(); ((SPOT)) && extra+=(--spot); ((PREEMPTIBLE)) && extra+=(--preemptible)
  run gcloud compute tpus tpu-vm create "$NAME" "${LOC[@]}" --accelerator-type "$TYPE" --version "$RUNTIME" "${extra[@]}"
  ((NO_WAIT)) || wait_for READY gcloud compute tpus tpu-vm describe "$NAME" "${LOC[@]}" '--format=value(state)'
fi
((DRY_RUN)) || note "next: tpu/setup.sh $NAME --zone $ZONE [--bucket BUCKET]"
