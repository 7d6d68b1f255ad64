#!/usr/bin/env bash
# Install wkd-lightning into a virtualenv (default .venv; override with WKD_VENV) and the offline dataset.
# Sourced by scripts/quickstart.sh and scripts/test.sh; safe to re-run (skips what is already there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${WKD_VENV:-.venv}"

# torch and torchvision must come as a matching pair. These are the pairs that install on this project's machines
# (Python 3.11; pip takes them from the local disk there); set WKD_TORCH to use another pair elsewhere.
case "$(uname -m)" in
  aarch64) default_torch="torch==2.9.1 torchvision==0.24.1" ;;
  *) default_torch="torch==2.14.1 torchvision==0.29.1" ;;
esac
TORCH_SPEC="${WKD_TORCH:-$default_torch}"

quiet_pip() {  # pip install, printing its output only when it fails (this machine's pip warns about local indexes)
  local log; log=$(mktemp)
  "$PY" -m pip install -q "$@" > "$log" 2>&1 || { cat "$log"; rm -f "$log"; echo "[install] pip install $* failed" >&2; exit 1; }
  rm -f "$log"
}

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
wanted=$(echo "$TORCH_SPEC" | sed 's/ /\n/g' | sort | tr '\n' ' ')
have=$("$PY" -c "import importlib.metadata as m; print(' '.join(sorted(f'{p}=={m.version(p)}' for p in ('torch', 'torchvision'))))" 2>/dev/null | sed 's/+[a-z0-9]*//g' || true)
if [ "$(echo $have)" != "$(echo $wanted)" ]; then
  echo "[install] $TORCH_SPEC into $VENV (about a minute)"
  quiet_pip --upgrade pip
  quiet_pip $TORCH_SPEC
fi
echo "[install] wkd-lightning with its dev extra"
quiet_pip -e ".[dev]"
"$PY" -c "import wkd_lightning, torchvision; print('[install] ok: wkd_lightning', wkd_lightning.__version__)"

FASHION_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ]; then
  echo "[install] Fashion-MNIST missing: apt-get install -y dataset-fashion-mnist"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist > /dev/null
fi
export PATH="$PWD/$VENV/bin:$PATH"
