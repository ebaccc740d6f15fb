#!/usr/bin/env bash
# GPU benchmark of the pretraining step: bash bench/gpu.sh [--dry-run] [--budget S]
# Runs from any copy of the repo, offline. Finds a Python that has torch (PYTHON=..., then
# .venv/bin/python, python3, python); if timm (or the optional zarr/laion-clap) is missing it
# installs it from a local wheel folder when BENCH_WHEELS points at one, else tries pip once
# with a short timeout (costs seconds when there is no network) and goes on without it: the
# configurations that need a missing package record the import error in the JSON.
# Output: $OUT/gpu-results.json (if OUT is set) else bench/gpu-results.json, plus a table on stdout.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
for a in "$@"; do [[ "$a" == "--dry-run" ]] && DRY=1; done

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for c in .venv/bin/python python3 python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" >/dev/null 2>&1; then PY="$c"; break; fi
  done
fi
if [[ -z "$PY" ]]; then
  echo "[gpu.sh] no Python with torch found; trying: pip install torch==2.9.1 (needs network)"
  python3 -m pip install -q --timeout 10 --retries 0 "torch==2.9.1" "torchaudio==2.9.1" "timm>=1.0.15" \
    || { echo "[gpu.sh] FAILED: no torch and it cannot be installed here"; exit 2; }
  PY=python3
fi

# find_spec, not import: `import laion_clap` runs its __init__, which retries the network for minutes
have() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" >/dev/null 2>&1; }
install() {  # install <import-name> <pip specs...>
  local mod="$1"; shift
  have "$mod" && return 0
  if [[ -n "${BENCH_WHEELS:-}" && -d "${BENCH_WHEELS}" ]]; then
    "$PY" -m pip install -q --no-index --find-links "$BENCH_WHEELS" --no-deps "$@" && return 0
  fi
  if [[ $DRY -eq 0 && -z "${BENCH_OFFLINE:-}" ]]; then   # BENCH_OFFLINE=1: do not try the network
    echo "[gpu.sh] $mod missing; trying pip (short timeout)"
    "$PY" -m pip install -q --timeout 5 --retries 0 --no-deps "$@" >/dev/null 2>&1 && return 0
    echo "[gpu.sh] $mod: not installed (offline?); configurations that need it will record the error"
  fi
  return 1
}
install timm "timm>=1.0.15"
# optional: the online teacher needs laion-clap's HTSAT (+ torchlibrosa, librosa)
install torchlibrosa torchlibrosa
install laion_clap "laion-clap==1.1.7"

echo "[gpu.sh] python: $(command -v "$PY")"
"$PY" - <<'EOF'
import platform
import torch
print(f"[gpu.sh] python {platform.python_version()}  torch {torch.__version__}  cuda {torch.version.cuda}"
      f"  device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}")
from importlib import metadata
for m in ["timm", "numpy", "h5py", "zarr", "laion-clap", "torchlibrosa", "librosa"]:
    try:
        print(f"[gpu.sh]   {m} {metadata.version(m)}")
    except metadata.PackageNotFoundError:
        print(f"[gpu.sh]   {m} MISSING")
EOF
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
# the script keeps its own budget (default 270 s); this is the hard stop behind it
if [[ $DRY -eq 1 ]]; then LIMIT=240; else LIMIT=295; fi
timeout -k 5 "$LIMIT" "$PY" bench/gpu_bench.py "$@"
rc=$?
[[ $rc -eq 124 ]] && echo "[gpu.sh] hard time limit hit; partial results are in the JSON"
exit $rc
