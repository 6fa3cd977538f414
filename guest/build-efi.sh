#!/usr/bin/env bash
# Builds the UEFI test disk: a GPT disk whose one partition is an EFI system partition with
# systemd-boot (Debian's systemd-boot-efi) as the removable-media loader
# (\EFI\BOOT\BOOTX64.EFI), one loader entry, and the default guest image's kernel (bzImage,
# EFI stub) and initramfs. Booted through OVMF it reaches the busybox userspace, which
# prints `nimbus-guest ready`: firmware, loader, kernel, userspace, as a real EFI image boots.
#
# Output, under OUT_DIR (default ${NIMBUS_IMAGE_CACHE:-/var/cache/nimbus}/images/efi):
#   OUT_DIR/esp.raw      the raw disk (64 MiB)
#   OUT_DIR/image.json   {"version": ..., "disk": "esp.raw", "ready_marker": ...}
# Idempotent: nothing is done while image.json carries this recipe's version (a hash of
# this script, the default image's version and the loader). Built without a loop device or
# a mount: sfdisk writes the partition table into the file, mkfs.vfat and mtools fill the
# partition's image, dd puts it in place.
#
# The loader comes from Debian's systemd-boot-efi package, which is fetched, never installed:
# installing it would pull a matching systemd onto the host (an operator's init system must
# not change because nimbus's tests need an EFI binary). `apt-get download` takes the
# candidate version from this machine's apt sources, its SHA256 is checked against apt's
# (signed) index, `dpkg-deb -x` unpacks it, and the loader is kept in
# OUT_DIR/loader/VERSION/ (offline afterwards).
#
# Needs guest/build.sh's default image and, from scripts/install-deps.sh: dosfstools, mtools,
# fdisk (sfdisk); apt-get and dpkg-deb (Debian/Ubuntu).
#
# Usage: guest/build-efi.sh [OUT_DIR]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${NIMBUS_IMAGE_CACHE:-/var/cache/nimbus}
OUT_DIR=${1:-$CACHE/images/efi}
DEFAULT_DIR=$CACHE/images/default
LOADER_PACKAGE=systemd-boot-efi
LOADER_IN_PACKAGE=usr/lib/systemd/boot/efi/systemd-bootx64.efi
DISK_MIB=64
# The partition starts at 1 MiB (sector 2048) and fills the disk but GPT's backup (33
# sectors at the end): the FAT image is one MiB less 1 MiB of slack.
PART_MIB=$((DISK_MIB - 2))
READY_MARKER="nimbus-guest ready"

log() { echo "[guest/build-efi] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

field() { sed -n "s/^ *\"$2\": *\"\\([^\"]*\\)\".*/\\1/p" "$1" | head -1; }

# candidate_version: the version of $LOADER_PACKAGE apt would install (empty: none known).
candidate_version() {
    apt-cache policy "$LOADER_PACKAGE" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '(none)' || true
}

# fetch_loader: prints the path of the loader of the candidate $LOADER_PACKAGE, fetched and
# unpacked into OUT_DIR/loader/VERSION/ unless it is there already.
fetch_loader() {
    local version
    version=$(candidate_version)
    if [ -z "$version" ]; then
        log "apt knows no $LOADER_PACKAGE: updating the package lists"
        apt-get update -qq >&2 || die "apt-get update failed: no package lists to find $LOADER_PACKAGE in"
        version=$(candidate_version)
        [ -n "$version" ] || die "no $LOADER_PACKAGE in this machine's apt sources"
    fi
    local dir=$OUT_DIR/loader/${version//[^A-Za-z0-9.+~-]/_}
    local loader=$dir/$(basename "$LOADER_IN_PACKAGE")
    if [ -f "$loader" ]; then
        echo "$loader"
        return 0
    fi
    local want tmp deb got
    want=$(apt-cache show "$LOADER_PACKAGE=$version" | sed -n 's/^SHA256: *//p' | head -1)
    [ -n "$want" ] || die "apt gives no SHA256 for $LOADER_PACKAGE $version"
    mkdir -p "$OUT_DIR/loader"
    tmp=$(mktemp -d "$OUT_DIR/loader/.fetch.XXXXXX")
    # apt's download sandbox user must be able to write the file.
    chmod 755 "$tmp"
    if id _apt >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then chown _apt "$tmp"; fi
    (cd "$tmp" && apt-get download -qq "$LOADER_PACKAGE=$version" >&2) ||
        { rm -rf "$tmp"; die "cannot download $LOADER_PACKAGE $version (apt-get download)"; }
    deb=$(ls "$tmp"/*.deb)
    got=$(sha256sum "$deb" | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then
        rm -rf "$tmp"
        die "$LOADER_PACKAGE $version: sha256 $got, apt's index says $want"
    fi
    dpkg-deb -x "$deb" "$tmp/root"
    [ -f "$tmp/root/$LOADER_IN_PACKAGE" ] || { rm -rf "$tmp"; die "$LOADER_PACKAGE $version has no $LOADER_IN_PACKAGE"; }
    mkdir -p "$dir"
    install -m 644 "$tmp/root/$LOADER_IN_PACKAGE" "$loader.tmp"
    mv -f "$loader.tmp" "$loader"
    rm -rf "$tmp"
    log "fetched $LOADER_PACKAGE $version (sha256 $got)"
    echo "$loader"
}

main() {
    local t
    for t in sfdisk mkfs.vfat mcopy mmd sha256sum apt-get apt-cache dpkg-deb; do
        command -v "$t" >/dev/null 2>&1 || die "missing $t (run scripts/install-deps.sh)"
    done
    mkdir -p "$OUT_DIR"
    # Global: mcopy below copies it.
    LOADER=$(fetch_loader)
    [ -f "$DEFAULT_DIR/image.json" ] || die "no default image in $DEFAULT_DIR: run guest/build.sh"
    local base version kernel initrd cmdline
    base=$(field "$DEFAULT_DIR/image.json" version)
    kernel=$DEFAULT_DIR/$base/vmlinuz
    initrd=$DEFAULT_DIR/$(field "$DEFAULT_DIR/image.json" initrd)
    cmdline=$(field "$DEFAULT_DIR/image.json" cmdline)
    [ -f "$kernel" ] && [ -f "$initrd" ] || die "the default image $base has no vmlinuz or initrd"
    version=$(cat "${BASH_SOURCE[0]}" "$LOADER" | sha256sum | cut -c1-12)-$base
    if [ -f "$OUT_DIR/image.json" ] && [ "$(field "$OUT_DIR/image.json" version)" = "$version" ]; then
        log "$OUT_DIR is up to date (version $version)"
        return 0
    fi
    exec 9>"$OUT_DIR/.lock"
    flock 9
    # Global: the EXIT trap reads it after main has returned.
    WORK=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT

    printf 'default nimbus.conf\ntimeout 0\n' >"$WORK/loader.conf"
    printf 'title nimbus default guest\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' \
        "$cmdline" >"$WORK/nimbus.conf"
    local part=$WORK/part.img
    mkfs.vfat -n ESP -C "$part" $((PART_MIB * 1024)) >/dev/null
    export MTOOLS_SKIP_CHECK=1
    mmd -i "$part" ::EFI ::EFI/BOOT ::loader ::loader/entries
    mcopy -i "$part" "$LOADER" ::EFI/BOOT/BOOTX64.EFI
    mcopy -i "$part" "$WORK/loader.conf" ::loader/loader.conf
    mcopy -i "$part" "$WORK/nimbus.conf" ::loader/entries/nimbus.conf
    mcopy -i "$part" "$kernel" ::vmlinuz
    mcopy -i "$part" "$initrd" ::initrd.img

    local disk=$WORK/esp.raw
    truncate -s ${DISK_MIB}M "$disk"
    # C12A7328-...: the EFI system partition type.
    printf 'label: gpt\nstart=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n' \
        $((PART_MIB * 2048)) | sfdisk --quiet "$disk"
    dd if="$part" of="$disk" bs=1M seek=1 conv=notrunc status=none
    cat >"$WORK/image.json" <<EOF
{
  "version": "$version",
  "disk": "esp.raw",
  "ready_marker": "$READY_MARKER"
}
EOF
    chmod 644 "$disk" "$WORK/image.json"
    mv -f "$disk" "$OUT_DIR/esp.raw"
    # The manifest last: its version says the disk beside it is complete.
    mv -f "$WORK/image.json" "$OUT_DIR/image.json"
    log "built $OUT_DIR/esp.raw (version $version)"
}

main "$@"
