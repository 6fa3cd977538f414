#!/usr/bin/env bash
# Builds a Debian 12 (bookworm) cloud image from Debian packages: the image tests and
# benchmarks upload to nimbus as a tenant would upload theirs (a real distribution booted
# through firmware, configured by cloud-init, logged into over SSH).
#
#   mmdebstrap bookworm + linux-image-cloud-amd64, systemd, cloud-init, openssh-server
#   -> an ext4 file system made from that tree (mkfs.ext4 -d: no loop device, no mount)
#   -> a 1 GiB MBR disk: GRUB for BIOS in the MBR and its gap, the ext4 as partition 1
#   -> OUT_DIR/<version>/debian-12.qcow2 (~150 MiB), and OUT_DIR/image.json naming it.
#
# The guest: serial console on ttyS0 (kernel, systemd and a getty), cloud-init with only
# the NoCloud datasource (nimbus attaches a CIDATA seed disk) and only an Ed25519 host
# key (RSA key generation costs 5-12 s under TCG), no SSH host keys in the image, user
# `debian` from cloud-init with the instance's keys and sudo, network from the seed's
# network-config (ifupdown), root partition grown to the disk by cloud-init.
#
# Usage: guest/build-debian.sh [OUT_DIR]      prints the qcow2's path on stdout
#   OUT_DIR defaults to ${NIMBUS_IMAGE_CACHE:-/var/cache/nimbus}/images/debian-12.
#   The packages are kept in ${NIMBUS_DEB_CACHE:-OUT_DIR/../../debs}/debian-12.
# Idempotent: when OUT_DIR/image.json names this recipe's version (a hash of this
# script), nothing is built. A version directory never changes once in place.
#
# Needs root (mmdebstrap's chroot mode) and, from scripts/install-deps.sh: mmdebstrap,
# grub-pc-bin (grub-mkimage and its i386-pc modules), fdisk (sfdisk), e2fsprogs,
# qemu-utils. Downloads only Debian packages, from the mirror of this machine's apt
# sources.
set -euo pipefail

RECIPE_VERSION=1
SUITE=bookworm
DISK_SIZE_MIB=1024
PART_START_SECTOR=2048 # 1 MiB: the gap before it holds GRUB's core image
ROOT_UUID=6e696d62-7573-4000-8000-646562313201
PACKAGES=(
    linux-image-cloud-amd64 systemd-sysv udev dbus cloud-init openssh-server
    cloud-guest-utils e2fsprogs ifupdown iproute2 netbase hostname sudo less
)
CMDLINE="root=UUID=$ROOT_UUID ro console=ttyS0,115200n8"
# GRUB modules built into the core image (with their dependencies): there is no
# /boot/grub/i386-pc in the guest, nothing is loaded at boot time.
GRUB_MODULES="biosdisk part_msdos ext2 normal linux boot serial terminal echo test configfile"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200}
export SOURCE_DATE_EPOCH

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT_DIR=${1:-${NIMBUS_IMAGE_CACHE:-/var/cache/nimbus}/images/debian-12}

log() { echo "[guest/build-debian] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

recipe_version() {
    echo "${RECIPE_VERSION}-$(sha256sum "$HERE/build-debian.sh" | cut -c1-12)"
}

manifest_field() {
    [ -f "$1" ] || return 0
    sed -n "s/^ *\"$2\": *\"\\([^\"]*\\)\".*/\\1/p" "$1" | head -1
}

is_up_to_date() {
    local disk
    [ "$(manifest_field "$OUT_DIR/image.json" version)" = "$VERSION" ] || return 1
    disk=$(manifest_field "$OUT_DIR/image.json" disk)
    [ -n "$disk" ] && [ -f "$OUT_DIR/$disk" ]
}

check_tools() {
    local missing=() t
    [ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap builds the tree in a chroot)"
    for t in mmdebstrap grub-mkimage sfdisk mkfs.ext4 qemu-img sha256sum flock; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    [ -f /usr/lib/grub/i386-pc/boot.img ] || missing+=("grub-pc-bin")
    [ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (run scripts/install-deps.sh)"
}

# --- the tree -----------------------------------------------------------------------

bootstrap() {
    local tree=$1 mirror
    # shellcheck source=../scripts/lib/debian-mirror.sh
    . "$HERE/../scripts/lib/debian-mirror.sh"
    mirror=$(debian_mirror)
    [ -n "$mirror" ] || die "no Debian mirror in this machine's apt sources (/etc/apt/sources*)"
    log "mmdebstrap $SUITE (${#PACKAGES[@]} packages and their dependencies)"
    # The .debs are kept between builds (DEB_CACHE): a rebuild downloads only what changed.
    mkdir -p "$DEB_CACHE"
    mmdebstrap --mode=root --variant=apt --format=directory --quiet \
        --skip=download/empty --skip=essential/unlink \
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives' \
        --setup-hook="sync-in $DEB_CACHE /var/cache/apt/archives" \
        --customize-hook="sync-out /var/cache/apt/archives $DEB_CACHE" \
        --include="$(
            IFS=,
            echo "${PACKAGES[*]}"
        )" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/*' \
        "$SUITE" "$tree" "deb $mirror $SUITE main" "deb $mirror $SUITE-updates main" >&2 ||
        die "mmdebstrap failed"
}

# Everything that makes the tree a cloud image, written from outside the chroot.
configure() {
    local tree=$1
    [ -e "$tree/vmlinuz" ] && [ -e "$tree/initrd.img" ] ||
        die "the kernel package left no /vmlinuz and /initrd.img links"

    cat >"$tree/etc/fstab" <<EOF
UUID=$ROOT_UUID / ext4 rw,discard,errors=remount-ro 0 1
EOF
    # Set at first boot: the hostname by cloud-init, the machine id by systemd.
    rm -f "$tree/etc/hostname" "$tree/etc/resolv.conf"
    : >"$tree/etc/machine-id"
    rm -f "$tree/var/lib/dbus/machine-id"
    # No host keys in an image every instance shares: cloud-init makes them at first boot.
    rm -f "$tree"/etc/ssh/ssh_host_*

    cat >"$tree/etc/cloud/cloud.cfg.d/90-nimbus.cfg" <<'EOF'
# nimbus: the instance's seed is a NoCloud CIDATA disk; look nowhere else.
datasource_list: [NoCloud, None]
# RSA host key generation costs 5-12 s on an emulated CPU; Ed25519 is enough.
ssh_genkeytypes: [ed25519]
# The hostname resolves (sudo asks): cloud-init keeps it in /etc/hosts.
manage_etc_hosts: true
# No locales package (the image's locale is C.UTF-8, /etc/default/locale) and no GRUB
# package in the image.
locale: C.UTF-8
grub_dpkg:
  enabled: false
EOF
    echo "LANG=C.UTF-8" >"$tree/etc/default/locale"
    cat >"$tree/etc/network/interfaces" <<'EOF'
# cloud-init writes the instance's interfaces (from the seed's network-config) here.
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
EOF
    # Nothing runs apt or scrubs disks behind the tenant's back; e2scrub_reap alone costs
    # 12 s of boot under TCG.
    rm -f "$tree"/etc/systemd/system/timers.target.wants/{apt-daily,apt-daily-upgrade,dpkg-db-backup,e2scrub_all,fstrim}.timer
    rm -f "$tree"/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service

    mkdir -p "$tree/boot/grub"
    cat >"$tree/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "Debian GNU/Linux 12 (nimbus image)" {
    linux /vmlinuz $CMDLINE
    initrd /initrd.img
}
EOF
}

# --- the disk -----------------------------------------------------------------------

# Partition 1 (ext4 from the tree) from PART_START_SECTOR to the end of the disk; GRUB's
# boot sector in the MBR (its code only: the partition table stays), its core image in
# the gap after it, which the boot sector loads from sector 1 (grub-mkimage writes the
# core image's length into its first sector).
make_disk() {
    local tree=$1 work=$2 out=$3
    local raw=$work/disk.raw part=$work/root.ext4 core=$work/core.img
    local part_sectors=$(((DISK_SIZE_MIB << 11) - PART_START_SECTOR))

    truncate -s $((part_sectors * 512)) "$part"
    E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -L debian-root -U "$ROOT_UUID" \
        -E "lazy_itable_init=0,lazy_journal_init=0,nodiscard,hash_seed=$ROOT_UUID" \
        -d "$tree" "$part" || die "mkfs.ext4 -d failed"

    truncate -s "${DISK_SIZE_MIB}M" "$raw"
    printf 'label: dos\nlabel-id: 0x6e696d62\nstart=%s, type=83, bootable\n' "$PART_START_SECTOR" |
        sfdisk --quiet "$raw" >/dev/null || die "sfdisk failed"
    dd if="$part" of="$raw" bs=1M seek=$((PART_START_SECTOR / 2048)) conv=notrunc,sparse status=none
    rm -f "$part"

    # shellcheck disable=SC2086 # a word list
    grub-mkimage -O i386-pc -o "$core" -p "(hd0,msdos1)/boot/grub" $GRUB_MODULES ||
        die "grub-mkimage failed"
    [ "$(stat -c %s "$core")" -lt $(((PART_START_SECTOR - 1) * 512)) ] ||
        die "GRUB's core image does not fit before the partition"
    dd if=/usr/lib/grub/i386-pc/boot.img of="$raw" bs=440 count=1 conv=notrunc status=none
    dd if="$core" of="$raw" bs=512 seek=1 conv=notrunc status=none

    # convert skips zero blocks: the qcow2 holds only what the tree wrote, compressed
    # (~400 MiB of files in ~150 MiB; QEMU inflates a cluster when the guest reads it).
    qemu-img convert -q -f raw -O qcow2 -c -o compression_type=zstd "$raw" "$out" || die "qemu-img convert failed"
    rm -f "$raw"
}

write_image_json() {
    local out=$1 disk=$2 kver=$3
    cat >"$out" <<EOF
{
  "name": "debian-12",
  "version": "$VERSION",
  "disk": "$disk",
  "format": "qcow2",
  "firmware": "bios",
  "os": "debian-12",
  "kernel_version": "$kver",
  "login_user": "debian"
}
EOF
}

build_version() {
    local dest=$1 tree kver
    WORK=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    tree=$WORK/tree
    mkdir -p "$WORK/out"
    bootstrap "$tree"
    configure "$tree"
    kver=$(basename "$(readlink "$tree/vmlinuz")")
    kver=${kver#vmlinuz-}
    log "kernel $kver; tree $(du -sh "$tree" | cut -f1); making the disk"
    make_disk "$tree" "$WORK" "$WORK/out/debian-12.qcow2"
    write_image_json "$WORK/out/image.json" debian-12.qcow2 "$kver"
    chmod 755 "$WORK/out"
    chmod 644 "$WORK/out"/*
    mv -T "$WORK/out" "$dest"
    rm -rf "$WORK"
    trap - EXIT
    log "built $dest/debian-12.qcow2 ($(du -h "$dest/debian-12.qcow2" | cut -f1))"
}

main() {
    VERSION=$(recipe_version)
    if ! is_up_to_date; then
        check_tools
        mkdir -p "$OUT_DIR"
        OUT_DIR=$(cd "$OUT_DIR" && pwd)
        DEB_CACHE=${NIMBUS_DEB_CACHE:-$(dirname "$(dirname "$OUT_DIR")")/debs}/debian-12
        exec 9>"$(dirname "$OUT_DIR")/.$(basename "$OUT_DIR").lock"
        flock 9
    fi
    if ! is_up_to_date; then
        rm -rf "$OUT_DIR"/.build.* "$OUT_DIR/.image.json.tmp"
        local dir=$OUT_DIR/$VERSION
        if [ -f "$dir/image.json" ]; then
            log "version $VERSION is already built in $dir"
        elif [ -e "$dir" ]; then
            die "$dir exists but holds no image.json (not made by this script?); remove it"
        else
            local t0=$SECONDS
            log "building version $VERSION into $dir"
            build_version "$dir"
            log "took $((SECONDS - t0)) s"
        fi
        local tmp=$OUT_DIR/.image.json.tmp
        write_image_json "$tmp" "$VERSION/debian-12.qcow2" "$(manifest_field "$dir/image.json" kernel_version)"
        chmod 644 "$tmp"
        mv -f "$tmp" "$OUT_DIR/image.json"
    else
        log "$OUT_DIR is up to date (version $VERSION)"
    fi
    echo "$OUT_DIR/$(manifest_field "$OUT_DIR/image.json" disk)"
}

main "$@"
