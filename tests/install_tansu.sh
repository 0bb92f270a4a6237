#!/usr/bin/env bash
# Installs the tansu Kafka broker that the Kafka end-to-end test runs against, once per machine, and prints its
# path. Used by .ci/run and tests/kafka_e2e.sh, so the version and features are spelled in one place.
# The build (about 10 minutes on 2 cores) goes to cargo install's own temporary directory, not $CARGO_TARGET_DIR.
set -euo pipefail
root="$HOME/.cache/vigil-tools"
if [ ! -x "$root/bin/tansu" ]; then
  echo "installing the tansu broker (about 10 minutes on 2 cores, the first time)" >&2
  env -u CARGO_TARGET_DIR cargo install tansu@0.6.0 --locked --features dynostore --root "$root" >&2
fi
echo "$root/bin/tansu"
