#!/usr/bin/env bash
# Put the project, a Python venv with ifp_jax[tpu] and (optionally) a gcsfuse bucket mount on
# every worker of a TPU VM.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
usage: $PROG NAME --zone ZONE [options]

On every worker of TPU VM NAME: install the project at ~/ifp_jax, a venv at ~/ifp_venv with
\`pip install -e '.[tpu]'\`, and optionally mount a GCS bucket at /gcs/BUCKET.
  (default)              ship \`git archive\` of this checkout's HEAD (committed files only)
  --git-ref REF          archive REF instead of HEAD; with --git-url, check out REF
  --git-url URL          clone URL on every worker instead of copying a tarball
  --bucket BUCKET        also mount gs://BUCKET at /gcs/BUCKET with gcsfuse, for tools that
                         need a local path (ifp train itself takes --workdir gs://BUCKET/RUN)
  --python VERSION       Python for the venv, installed with uv if missing (default 3.11)
  --project P, --zone Z  (env IFP_TPU_PROJECT, IFP_TPU_ZONE)
  --dry-run              print the commands, run nothing
Rerun after changing code (the venv is kept) and after a preempted TPU is recreated.
USAGE
}

OPTS=(git-url git-ref bucket python)
GIT_URL='' GIT_REF='' BUCKET='' PYTHON=3.11
parse_args "$@"
need_name
((${#POSITIONAL[@]} == 1)) || die "unexpected arguments: ${POSITIONAL[*]:1}"
need_zone
BUCKET=${BUCKET#gs://}; BUCKET=${BUCKET%/}
[[ -z $BUCKET || $BUCKET =~ ^[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9]$ ]] || die "bad bucket name '$BUCKET': pass --bucket BUCKET (as in gs://BUCKET)"
[[ $PYTHON =~ ^3\.[0-9]+$ ]] || die "bad --python '$PYTHON': pass a version like 3.11"
loc

# 1. Source code on every worker, at ~/ifp_jax.
if [[ -n $GIT_URL ]]; then
  src="rm -rf $REMOTE_SRC && git clone -q $(quote "$GIT_URL") $REMOTE_SRC"
  [[ -z $GIT_REF ]] || src+=" && git -C $REMOTE_SRC checkout -q $(quote "$GIT_REF")"
  tpu_ssh all "set -euo pipefail; $src"
else
  tarball="${TMPDIR:-/tmp}/ifp_jax_src_$NAME.tar.gz"
  if ((!DRY_RUN)) && [[ -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]]; then
    note "warning: uncommitted changes are not shipped (git archive ships ${GIT_REF:-HEAD})"
  fi
  ((DRY_RUN)) || trap 'rm -f "$tarball"' EXIT
  run git -C "$REPO_ROOT" archive --format=tar.gz -o "$tarball" "${GIT_REF:-HEAD}"
  run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:ifp_jax_src.tar.gz" "${LOC[@]}" --worker=all
  tpu_ssh all "set -euo pipefail; rm -rf $REMOTE_SRC && mkdir -p $REMOTE_SRC && tar -xzf ~/ifp_jax_src.tar.gz -C $REMOTE_SRC && rm ~/ifp_jax_src.tar.gz"
fi

# 2. venv with the TPU extra (jax[tpu]); uv supplies a Python >= 3.11 the TPU image may lack.
pip="$REMOTE_VENV/bin/pip"
tpu_ssh all "set -euo pipefail; export PATH=\"\$HOME/.local/bin:\$PATH\"; \
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; \
[ -x $REMOTE_VENV/bin/python ] || uv venv -q --seed --python $PYTHON $REMOTE_VENV; \
$pip install -q -U pip; cd $REMOTE_SRC && $pip install -q -e '.[tpu]'; \
$pip show libtpu >/dev/null || { echo \"\$(hostname): libtpu missing: the tpu extra of setup.cfg must pull jax[tpu]\" >&2; exit 1; }; \
$REMOTE_VENV/bin/python -c 'import jax, ifp_jax; print(\"jax\", jax.__version__)'"

# 3. Optional shared workdir: gs://BUCKET mounted at /gcs/BUCKET on every worker.
if [[ -n $BUCKET ]]; then
  apt='sudo apt-get -o DPkg::Lock::Timeout=600 -qq'
  tpu_ssh all "set -euo pipefail; if ! command -v gcsfuse >/dev/null; then \
echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
$apt update && $apt install -y gcsfuse; fi; \
sudo mkdir -p /gcs/$BUCKET && sudo chown \"\$(id -u):\$(id -g)\" /gcs/$BUCKET; \
mountpoint -q /gcs/$BUCKET || gcsfuse --implicit-dirs $BUCKET /gcs/$BUCKET"
fi
((DRY_RUN)) || note "next: tpu/launch.sh $NAME EXPERIMENT --workdir gs://${BUCKET:-BUCKET}/RUN --zone $ZONE"
