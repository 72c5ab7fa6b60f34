#!/usr/bin/env bash
# Runs LocalStack in host mode (no Docker) in the foreground, with S3 signature checks on.
# Usage: localstack/run.sh [PORT]   (default 4566). Installs it first (localstack/install.sh).
# Then: AIC_STORE=s3://aic AIC_S3_ENDPOINT=http://127.0.0.1:PORT AWS_ACCESS_KEY_ID=test
#       AWS_SECRET_ACCESS_KEY=test, and localstack/wire.py to send the bucket's events to
#       the functions host.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="${AIC_TOOLS:-$HOME/.cache/aic-tools}"
port="${1:-4566}"
bash "$here/install.sh"
data="${LOCALSTACK_DATA:-$(mktemp -d -t aic-localstack-XXXX)}"
export OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="$data" GATEWAY_LISTEN="127.0.0.1:$port" \
  LOCALSTACK_HOST="127.0.0.1:$port" GATEWAY_SERVER=hypercorn SERVICES=s3,sns,sqs,sts \
  S3_SKIP_SIGNATURE_VALIDATION=0 LOCALSTACK_TELEMETRY_DISABLED=1 DISABLE_EVENTS=1
echo "LocalStack (host mode) on http://127.0.0.1:$port, data in $data" >&2
exec "$tools/localstack-venv/bin/python" -m localstack.runtime.main
