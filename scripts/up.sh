#!/usr/bin/env bash
# Quick start: installs what is missing, builds nimbus and its default guest image, and runs
# an all-in-one cloud (`nimbus up`) with two hosts. Extra arguments go to `nimbus up`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
    bash scripts/install-deps.sh
fi
bash guest/build.sh
cargo build --release --locked -p nimbus-cli
install -m 0755 target/release/nimbus /usr/local/bin/nimbus 2>/dev/null || true
exec target/release/nimbus up --hosts 2 "$@"
