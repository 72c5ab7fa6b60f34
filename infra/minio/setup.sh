#!/bin/sh
# Points a MinIO bucket's notifications at the aic functions host (its webhook, /events).
#
#   mc alias set pool http://minio:9000 ACCESS_KEY SECRET_KEY
#   infra/minio/setup.sh pool aic http://functions:8080 [WEBHOOK_TOKEN [WEB_ORIGIN]]
#
# Every object created under users/ whose key ends in .json (requests, manifests, status
# records) is posted to the host. MinIO keeps undelivered events in queue_dir and retries
# them, so an outage of the host loses nothing; the host answers 503 when an event must come
# again. With WEBHOOK_TOKEN, MinIO sends it as a bearer token and the host (AIC_WEBHOOK_TOKEN)
# refuses bodies without it. Without one, the host takes MinIO's posts only if it was started
# with AIC_WEBHOOK_UNAUTHENTICATED=1 (it refuses unsigned posts otherwise).
#
# The web app (served by the host) uploads and downloads through presigned URLs, so browsers
# at WEB_ORIGIN (default: the host's origin; the public address users open) may reach MinIO:
# MinIO's CORS is server-wide (`api cors_allow_origin`; it exposes ETag, which multipart
# uploads read). Idempotent.
#
# The webhook target is `AIC`, the name the Nomad job's environment gives it
# (`MINIO_NOTIFY_WEBHOOK_*_AIC`: MinIO takes the suffix as the target's name, case and all, and
# an environment setting wins over `mc admin config`), so the bucket's rule names one target
# wherever MinIO runs.
set -eu
alias="${1:?usage: setup.sh MC_ALIAS BUCKET FUNCTIONS_URL [WEBHOOK_TOKEN]}"
bucket="${2:?usage: setup.sh MC_ALIAS BUCKET FUNCTIONS_URL [WEBHOOK_TOKEN]}"
url="${3:?usage: setup.sh MC_ALIAS BUCKET FUNCTIONS_URL [WEBHOOK_TOKEN]}"
token="${4:-}"
web="${5:-$(printf '%s' "$url" | cut -d/ -f1-3)}"

mc mb --ignore-existing "$alias/$bucket"
mc anonymous set none "$alias/$bucket"
endpoint="${url%/}/events"
if [ -n "$token" ]; then
  mc admin config set "$alias" notify_webhook:AIC endpoint="$endpoint" auth_token="$token" \
    queue_dir=/data/.aic-events queue_limit=100000
else
  mc admin config set "$alias" notify_webhook:AIC endpoint="$endpoint" queue_dir=/data/.aic-events queue_limit=100000
fi
mc admin config set "$alias" api cors_allow_origin="$web"
mc admin service restart "$alias" --json >/dev/null
i=0
until mc ready "$alias" >/dev/null 2>&1 || [ "$i" -ge 30 ]; do i=$((i + 1)); sleep 1; done
mc event add "$alias/$bucket" arn:minio:sqs::AIC:webhook --event put --prefix users/ --suffix .json --ignore-existing
mc event ls "$alias/$bucket"
