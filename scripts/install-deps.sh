#!/usr/bin/env bash
# Installs what nimbus needs on a Debian/Ubuntu host: QEMU >= 9.0, busybox-static, cpio,
# e2fsprogs, iproute2, util-linux (nsenter), nftables, gcc + libc6-dev (guest/build.sh compiles the guest's
# static memcheck), and dosfstools + mtools (agents write cloud-init seed disks). On
# Debian 12 (bookworm) QEMU comes from bookworm-backports, because bookworm's QEMU 7.2
# corrupts guests live-migrated under TCG.
# The backports mirror is taken from this machine's existing apt sources.
set -euo pipefail

log() { echo "[install-deps] $*" >&2; }

qemu_version_ok() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    local v major
    v=$(qemu-system-x86_64 --version | head -1 | sed -E 's/.*version ([0-9]+)\.([0-9]+).*/\1/')
    major=${v:-0}
    [ "$major" -ge 9 ]
}

# debian_mirror: the Debian mirror URI of this machine's apt sources.
. "$(dirname "${BASH_SOURCE[0]}")/lib/debian-mirror.sh"

add_backports_if_bookworm() {
    . /etc/os-release
    [ "${VERSION_CODENAME:-}" = "bookworm" ] || return 0
    if grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return 0
    fi
    local mirror
    mirror=$(debian_mirror)
    if [ -z "$mirror" ]; then
        log "no Debian mirror found in /etc/apt/sources*; add bookworm-backports by hand"
        exit 1
    fi
    log "adding bookworm-backports from the configured mirror"
    cat >/etc/apt/sources.list.d/nimbus-backports.sources <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
}

main() {
    if [ "$(id -u)" -ne 0 ]; then
        log "run as root (apt-get install needs it)"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local pkgs=(busybox-static cpio e2fsprogs iproute2 util-linux nftables xz-utils zstd lz4 socat gcc libc6-dev
        dosfstools mtools)
    # guest/build-debian.sh (the Debian test image: mmdebstrap, GRUB for BIOS, sfdisk) and SSH in its tests.
    pkgs+=(mmdebstrap debian-archive-keyring grub-pc-bin fdisk openssh-client)
    # UEFI boot of images uploaded with --firmware uefi (OVMF_CODE_4M.fd, OVMF_VARS_4M.fd). The
    # EFI loader of guest/build-efi.sh's test disk is fetched by that script (apt-get download,
    # never installed: systemd-boot-efi would pull a newer systemd onto the host).
    pkgs+=(ovmf)
    # bench/network.py --part dhcp: the anchor, dnsmasq's DHCP server on a plain bridge.
    pkgs+=(dnsmasq-base)
    local need_apt=0
    for p in "${pkgs[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || need_apt=1
    done
    qemu_version_ok || need_apt=1
    if [ "$need_apt" -eq 0 ]; then
        log "all dependencies present"
        return 0
    fi
    add_backports_if_bookworm
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
    if ! qemu_version_ok; then
        . /etc/os-release
        if [ "${VERSION_CODENAME:-}" = "bookworm" ]; then
            apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils
        else
            apt-get install -y -qq --no-install-recommends qemu-system-x86 qemu-utils
        fi
    fi
    if ! qemu_version_ok; then
        log "QEMU 9.0 or newer is required; found: $(qemu-system-x86_64 --version | head -1)"
        exit 1
    fi
    log "ok: $(qemu-system-x86_64 --version | head -1)"
}

main "$@"
