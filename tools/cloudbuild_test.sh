#!/usr/bin/env bash
# Cloud Build's test step (cloudbuild.yaml): give a fresh python:3.11-trixie container what `make test`
# needs beyond the image, then run `make test` -- the README's test command, the same as .ci/run.
#
#   the image        Python 3.11 (= the python311 runtime), make, bash, curl, gpg
#   this script      Java 21 and the Google Cloud CLI with the Firestore and Pub/Sub emulators (the local
#                    stack; emulator releases since mid-2025 need Java 21, which Debian 13 has), npm (make
#                    tf-schema packs the providers' schemas)
#   make test        the virtualenvs, checkov, the schema packages, and Debian's chromium (tools/ensure_chromium.sh)
#   the terraform    step  /workspace/.tools/bin/terraform (make lint runs terraform fmt)
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends ca-certificates curl gnupg openjdk-21-jre-headless npm >/dev/null

curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | gpg --dearmor --yes -o /usr/share/keyrings/cloud.google.gpg
echo "deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt cloud-sdk main" \
  >/etc/apt/sources.list.d/google-cloud-sdk.list
apt-get update -qq
apt-get install -y -qq --no-install-recommends google-cloud-cli google-cloud-cli-firestore-emulator \
  google-cloud-cli-pubsub-emulator >/dev/null

export PATH="$PWD/.tools/bin:$PATH"
make test
