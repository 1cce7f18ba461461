# shellcheck shell=bash disable=SC2034,SC2088
# (SC2034: variables used by the scripts that source this; SC2088: remote tildes, see below)
# Shared helpers for tpu/*.sh: argument parsing, gcloud location flags, dry-run `run`.
#
# A script sets FLAGS (boolean options), OPTS (options taking a value) and LISTS (repeatable
# options taking a value), defines usage(), sets defaults, then calls `parse_args "$@"`.
# `--foo-bar` / `--foo-bar=V` set variable FOO_BAR (1 for flags); a LISTS option appends to the
# array FOO_BAR_LIST; other words land in POSITIONAL. Common to every script: --project, --zone
# (env IFP_TPU_PROJECT / IFP_TPU_ZONE), --dry-run, --help.
set -euo pipefail

PROG="tpu/$(basename "$0")"
TPU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$TPU_DIR")
PROJECT=${IFP_TPU_PROJECT:-}
ZONE=${IFP_TPU_ZONE:-}
DRY_RUN=0
POSITIONAL=()
FLAGS=()
OPTS=()
LISTS=()
# Where setup.sh puts things on every worker (launch.sh and logs.sh use the same paths). The
# tilde is expanded by the remote shell, not here.
REMOTE_SRC='~/ifp_jax'
REMOTE_VENV='~/ifp_venv'
REMOTE_LOGS='~/ifp_logs'

die() { echo "$PROG: error: $*" >&2; exit 2; }        # bad input: one line, exit 2
fail() { echo "$PROG: $*" >&2; exit 1; }              # runtime failure
note() { echo "$PROG: $*" >&2; }

# Shell-quote each argument (bare when safe) and print them space-separated.
quote() {
  local a out=() sq="'" esc="'\\''"
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$a"); else out+=("'${a//$sq/$esc}'"); fi
  done
  echo "${out[*]}"
}

# Print `+ cmd`; execute it unless --dry-run (stdout in dry-run, stderr when really running).
run() {
  if ((DRY_RUN)); then echo "+ $(quote "$@")"; return 0; fi
  echo "+ $(quote "$@")" >&2
  "$@"
}

_has() { local x=$1; shift; local y; for y in "$@"; do [[ $x == "$y" ]] && return 0; done; return 1; }

parse_args() {
  local a name val var has
  while (($#)); do
    a=$1; shift
    case $a in
      -h|--help) usage; exit 0 ;;
      --) POSITIONAL+=("$@"); break ;;
      --?*)
        name=${a#--}; has=0; val=
        if [[ $name == *=* ]]; then val=${name#*=}; name=${name%%=*}; has=1; fi
        var=${name^^}; var=${var//-/_}
        if _has "$name" dry-run "${FLAGS[@]}"; then
          ((!has)) || die "--$name takes no value"
          printf -v "$var" 1
        elif _has "$name" project zone "${OPTS[@]}" "${LISTS[@]}"; then
          if ((!has)); then
            [[ ${1:--} != -* ]] || die "--$name needs a value"
            val=$1; shift
          fi
          if _has "$name" "${LISTS[@]}"; then
            local -n list="${var}_LIST"; list+=("$val"); unset -n list
          else
            printf -v "$var" '%s' "$val"
          fi
        else
          die "unknown option --$name (see $PROG --help)"
        fi ;;
      -?*) die "unknown option $a (see $PROG --help)" ;;
      *) POSITIONAL+=("$a") ;;
    esac
  done
}

# Positional NAME (the TPU VM) and a zone are required by every gcloud TPU command.
need_name() {
  NAME=${POSITIONAL[0]:-}
  [[ -n $NAME ]] || die "missing TPU name: $PROG NAME --zone ZONE ... (see --help)"
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "bad TPU name '$NAME': use lowercase letters, digits and '-', starting with a letter"
}
need_zone() { [[ -n $ZONE ]] || die "no zone: pass --zone ZONE (e.g. us-east5-a) or set IFP_TPU_ZONE"; }

# `--zone Z [--project P]`, placed after the resource name of every gcloud command.
loc() { LOC=(--zone "$ZONE"); [[ -z $PROJECT ]] || LOC+=(--project "$PROJECT"); }

# Run a shell command line on workers of the TPU VM: tpu_ssh WORKER COMMAND [gcloud flags...]
tpu_ssh() {
  local worker=$1 cmd=$2; shift 2
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" "--worker=$worker" "$@" --command "$cmd"
}

GS_BUCKET_RE='^gs://[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9]'   # gs://BUCKET (3..63 characters)

# A --workdir is a gs://BUCKET/PATH URL (ifp train writes it directly) or an absolute path
# (e.g. /gcs/BUCKET/PATH on the gcsfuse mount of setup.sh --bucket). Sets WORKDIR (no trailing /).
check_workdir() {
  local hint="use gs://BUCKET/RUN (or an absolute path every worker sees, e.g. /gcs/BUCKET/RUN)"
  [[ -n $WORKDIR ]] || die "missing --workdir DIR: $hint"
  WORKDIR=${WORKDIR%/}
  if [[ $WORKDIR == gs://* ]]; then
    [[ $WORKDIR =~ $GS_BUCKET_RE/. && $WORKDIR != *$'\n'* ]] \
      || die "bad --workdir '$WORKDIR': $hint"
  else
    [[ $WORKDIR == /* ]] || die "--workdir must be a gs:// URL or an absolute path: $hint"
  fi
}

# The gs:// URL of a workdir (also for /gcs/BUCKET/PATH), or nothing for a worker-local path.
gs_url() {
  if [[ $1 == gs://* ]]; then echo "$1"
  elif [[ $1 =~ ^/gcs/([^/]+)/(.+)$ ]]; then echo "gs://${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
  fi
}

# Remote snippet printing the state of launch.sh's job RUN on a worker: `exit N` once the
# wrapper recorded ifp train's exit code, `running` while it runs, else `gone` (never started,
# or the wrapper was killed, e.g. the worker rebooted).
status_cmd() {
  local d=$REMOTE_LOGS/$1
  echo "if [ -f $d.exit ]; then echo \"exit \$(cat $d.exit)\"; \
elif [ -f $d.pid ] && kill -0 \"\$(cat $d.pid)\" 2>/dev/null; then echo running; else echo gone; fi"
}

# Queued resources: `describe` of ID (its state, e.g. ACTIVE; empty if the describe fails).
qr_describe() {
  QR_DESCRIBE=(gcloud compute tpus queued-resources describe "$1" "${LOC[@]}" '--format=value(state.state)')
}
