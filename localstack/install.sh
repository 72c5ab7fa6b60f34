#!/usr/bin/env bash
# Installs LocalStack (host mode, no Docker) into a Python 3.13 venv, idempotently.
# Usage: localstack/install.sh [VENV_DIR]   (default: $AIC_TOOLS/localstack-venv)
set -euo pipefail
tools="${AIC_TOOLS:-$HOME/.cache/aic-tools}"
venv="${1:-$tools/localstack-venv}"
stamp="$venv/.aic-installed-v1"
[ -f "$stamp" ] && exit 0

py=""
for cand in "$HOME/.pyenv/versions/3.13.0/bin/python3.13" python3.13 "$HOME/.pyenv/versions/3.12.1/bin/python3.12" python3.12; do
  if command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
done
if [ -z "$py" ]; then
  echo "localstack/install.sh: no python3.13 or python3.12 found; install one (pyenv install 3.13) and run again" >&2
  exit 1
fi
mkdir -p "$(dirname "$venv")"
"$py" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
# Versions measured to work in host mode on these machines.
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  'localstack-core[runtime]' 'cbor2<6' 'pyopenssl==24.3.0' 'cryptography==44.0.3' 'service_identity<25'
touch "$stamp"
