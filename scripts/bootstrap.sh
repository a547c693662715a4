# shellcheck shell=bash
# Sourced by run_tests.sh and run_finetune.sh: make sure the system packages and .venv exist.
# Installs with apt-get when it can (root or passwordless sudo); otherwise stops with the command to run.

APT_PACKAGES=(
  ffmpeg                                          # torchcodec: datasets >= 4 decodes audio through it
  espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts  # TTS engines
  asterisk-core-sounds-en-wav asterisk-core-sounds-en  # the demo's real target speaker (Allison)
  asterisk-core-sounds-es-wav asterisk-core-sounds-es  # the same voice in Mexican Spanish (tests/test_spanish.py)
  pocketsphinx-testdata                           # real utterances with transcripts for tests
  shellcheck sox
)
# torch 2.14.1 is what these machines hold on disk; torchaudio 2.11 is the newest that loads with it.
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchaudio==2.11.*"}
PYTHON=${PYTHON:-python3}

bootstrap_log() { echo "[bootstrap] $*" >&2; }

ensure_apt_packages() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      bootstrap_log "missing system packages: ${missing[*]}"
      bootstrap_log "run: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
      return 1
    fi
  fi
  bootstrap_log "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_venv() {
  local extras=${PROJECT_EXTRAS:-"offline,lora,speaker,dev"}
  # No wheel cache: torch's CUDA wheels are ~3 GB on top of the ~5.5 GB they install to, and a
  # CI machine with little disk ran out of space in the cached copy.
  export PIP_NO_CACHE_DIR=1
  local stamp_src stamp
  stamp_src=$(cat pyproject.toml; echo "$extras $TORCH_SPEC")
  stamp=".venv/.installed-$(printf '%s' "$stamp_src" | sha256sum | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  if [ ! -x .venv/bin/python ]; then
    bootstrap_log "creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
  fi
  if ! .venv/bin/python -c "import torch, torchaudio" 2>/dev/null; then
    bootstrap_log "installing $TORCH_SPEC"
    # shellcheck disable=SC2086  # TORCH_SPEC is a list of requirement strings
    .venv/bin/pip install -q $TORCH_SPEC
  fi
  bootstrap_log "installing the project (.[${extras}])"
  .venv/bin/pip install -q -e ".[${extras}]"
  rm -f .venv/.installed-*
  touch "$stamp"
}

bootstrap() {
  ensure_apt_packages && ensure_venv
}
