#!/usr/bin/env bash
# The whole test suite, as the README gives it and CI runs it: installs what is missing
# (QEMU >= 9, busybox, ...), builds the default guest image and, as root, the Debian test
# image once (cached), starts a local PostgreSQL (as root, unless NIMBUS_TEST_POSTGRES_URL
# names one), then runs every unit and end-to-end test. End-to-end tests boot real QEMU
# guests; as root, each test's hosts run in network namespaces of their own.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
    bash scripts/install-deps.sh
else
    echo "[test] not root: skipping dependency install; hosts will run without network namespaces" >&2
fi
bash guest/build.sh
# The UEFI test disk of crates/cli/tests/images.rs (systemd-boot and the default kernel; cached).
bash guest/build-efi.sh
if [ "$(id -u)" -eq 0 ]; then
    # The Debian cloud image of crates/cli/tests/debian.rs (cached; rebuilt when its script changes).
    bash guest/build-debian.sh >/dev/null
fi
if [ "$(id -u)" -eq 0 ] && [ -z "${NIMBUS_TEST_POSTGRES_URL:-}" ]; then
    # The store's tests on PostgreSQL too, and the several-controllers tests, which need it.
    NIMBUS_TEST_POSTGRES_URL=$(bash scripts/ci-postgres.sh)
    export NIMBUS_TEST_POSTGRES_URL
fi
cargo test --workspace --locked "$@"
