#!/usr/bin/env bash
# Install what dpdkeni's tests and demo need on a fresh Debian 12 machine (as root): the Debian packages in
# scripts/apt-packages.txt, a virtualenv in .venv, and the project (with its native build) in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^\s*$/d' scripts/apt-packages.txt)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating virtualenv $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel cffi
echo "bootstrap: installing dpdkeni (editable, with the native build)" >&2
"$VENV/bin/python" -m pip install -q -e '.[test,bench]'
touch "$VENV/.installed"
