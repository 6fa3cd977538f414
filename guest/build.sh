#!/usr/bin/env bash
# Builds nimbus's default guest image: Debian's cloud kernel, an initramfs with a
# static busybox userspace (see guest/rootfs and guest/README.md), and a small ext4
# base disk. Each version of the image goes into a directory of its own:
#   OUT_DIR/<version>/vmlinux     the kernel, uncompressed, booted through its PVH entry
#   OUT_DIR/<version>/vmlinuz     the same kernel as Debian ships it (bzImage)
#   OUT_DIR/<version>/initrd.img  busybox userspace, memcheck, modules (gzip'd newc cpio)
#   OUT_DIR/<version>/disk.qcow2  1 GiB ext4 base disk, the backing file of instance disks
#   OUT_DIR/<version>/image.json  that version's manifest, names relative to its directory
#   OUT_DIR/image.json            what the platform reads: the current version's files,
#                                 relative to OUT_DIR ("<version>/vmlinux", ...), kernel
#                                 cmdline, ready marker
# A version directory is never changed or removed once in place (instance disks are
# qcow2 overlays on its disk.qcow2, running VMs use its kernel and initrd): a rebuild
# adds a directory, then replaces OUT_DIR/image.json, last and atomically.
#
# Usage: guest/build.sh [OUT_DIR]
#   OUT_DIR defaults to ${NIMBUS_IMAGE_CACHE:-/var/cache/nimbus}/images/default.
#   NIMBUS_DEB_CACHE overrides where the kernel .deb is kept (default OUT_DIR/../../debs).
#
# Idempotent: when OUT_DIR/image.json already carries this recipe's version, nothing is
# done. The version changes by itself whenever this script or anything under rootfs/ or
# src/ changes (it includes a hash of them); bump RECIPE_VERSION for changes outside
# those files (e.g. to force a newer kernel in).
#
# Needs (from scripts/install-deps.sh): busybox-static, cpio, e2fsprogs, qemu-utils,
# gcc and libc6-dev (for the static src/memcheck.c), apt, and lz4 (or whatever
# decompressor Debian's kernel image uses) to unpack the kernel for PVH boot; without
# it the image falls back to the slower bzImage boot.
# The only thing downloaded is the kernel package, with apt-get download.
set -euo pipefail

RECIPE_VERSION=1
KERNEL_META=linux-image-cloud-amd64
# Drivers the guest needs, by group: /init loads a group only when its hardware is
# present (each module costs ~20 ms of boot under TCG, for nothing when the VM has,
# say, no NIC). Whatever the kernel builds as modules (plus dependencies) goes
# into the initramfs; built-in ones are skipped. ext4 and crc32c are built into Debian's
# cloud kernel today; listing them keeps the image working if that changes.
MODULE_GROUPS=(
    "virtio-blk: virtio_pci virtio_blk ext4 crc32c_generic"
    "virtio-net: virtio_pci virtio_net"
    "virtio-console: virtio_pci virtio_console"
    "power-button: button evdev" # ACPI power button as /dev/input/eventN
)
# See README.md ("Boot time") for the measurements behind each parameter.
CMDLINE="console=ttyS0 quiet 8250.nr_uarts=4 cryptomgr.notests noreplace-smp noapictimer no_timer_check init_on_alloc=0"
READY_MARKER="nimbus-guest ready"
DISK_SIZE=1G
# Fixed ids and timestamps make the base disk and initramfs byte-for-byte reproducible.
DISK_UUID=6e696d62-7573-4000-8000-646174613031
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1704067200}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT_DIR=${1:-${NIMBUS_IMAGE_CACHE:-/var/cache/nimbus}/images/default}

log() { echo "[guest/build] $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# The version string: recipe number plus a hash of every input file of the recipe.
# It names the version's directory, so it must stay a plain file name.
recipe_version() {
    local hash
    hash=$(cd "$HERE" && find build.sh rootfs src -type f -print0 | LC_ALL=C sort -z |
        xargs -0 sha256sum | sha256sum | cut -c1-12)
    echo "${RECIPE_VERSION}-${hash}"
}

# A string field of a manifest written by write_image_json (one field per line).
manifest_field() {
    [ -f "$1" ] || return 0
    sed -n "s/^ *\"$2\": *\"\\([^\"]*\\)\".*/\\1/p" "$1" | head -1
}

image_field() { manifest_field "$OUT_DIR/image.json" "$1"; }

is_up_to_date() {
    local field name
    [ "$(image_field version)" = "$VERSION" ] || return 1
    for field in kernel initrd disk; do
        name=$(image_field "$field")
        [ -n "$name" ] && [ -f "$OUT_DIR/$name" ] || return 1
    done
}

check_tools() {
    local missing=() t
    for t in busybox cpio gzip mkfs.ext4 debugfs qemu-img apt-get apt-cache dpkg-deb sha256sum flock gcc; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    [ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]} (run scripts/install-deps.sh)"
    BUSYBOX=$(command -v busybox)
    # A dynamically linked busybox would need its libraries in the initramfs too.
    if ldd "$BUSYBOX" >/dev/null 2>&1; then
        die "$BUSYBOX is dynamically linked; install busybox-static"
    fi
}

# --- kernel -------------------------------------------------------------------------

# The versioned kernel package the metapackage currently points at.
resolve_kernel_package() {
    apt-cache depends "$KERNEL_META" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

candidate_version() {
    apt-cache show --no-all-versions "$1" 2>/dev/null | awk '$1 == "Version:" { print $2; exit }'
}

# Prints the path of the kernel .deb in DEB_CACHE, downloading it when it is not there.
fetch_kernel_deb() {
    local pkg ver deb tmp
    pkg=$(resolve_kernel_package)
    if [ -z "$pkg" ]; then
        # Only when apt knows nothing (fresh machine): refresh the package lists once.
        log "apt-cache does not know $KERNEL_META; running apt-get update"
        apt-get update -qq >&2 || log "apt-get update failed"
        pkg=$(resolve_kernel_package)
    fi
    if [ -z "$pkg" ]; then
        # Offline or no Debian sources: any kernel we downloaded before will do.
        deb=$(find "$DEB_CACHE" -maxdepth 1 -name 'linux-image-*-cloud-amd64_*.deb' 2>/dev/null |
            sort -V | tail -1)
        [ -n "$deb" ] || die "cannot resolve $KERNEL_META and no cached kernel .deb in $DEB_CACHE"
        log "using cached $(basename "$deb") ($KERNEL_META not resolvable)"
        echo "$deb"
        return
    fi
    ver=$(candidate_version "$pkg")
    [ -n "$ver" ] || die "no installable version of $pkg"
    # apt-get download writes an epoch's ':' as %3a in the file name.
    deb="$DEB_CACHE/${pkg}_${ver//:/%3a}_amd64.deb"
    if [ -f "$deb" ]; then
        log "kernel: $pkg $ver (cached)"
        echo "$deb"
        return
    fi
    log "kernel: downloading $pkg $ver"
    tmp=$(mktemp -d "$DEB_CACHE/.download.XXXXXX")
    # Let apt's sandbox user write there (otherwise apt warns and downloads as root).
    chmod 755 "$tmp"
    if id _apt >/dev/null 2>&1; then chown _apt "$tmp" 2>/dev/null || true; fi
    if ! (cd "$tmp" && apt-get download -q "$pkg=$ver" >&2); then
        rm -rf "$tmp"
        die "apt-get download $pkg=$ver failed"
    fi
    mv "$tmp"/*.deb "$deb"
    rm -rf "$tmp"
    # Keep just the kernel in use.
    find "$DEB_CACHE" -maxdepth 1 -name 'linux-image-*.deb' ! -path "$deb" -delete
    echo "$deb"
}

# The "depends=" entry of a module's .modinfo section: the modules it needs, as
# recorded by the kernel build (modpost); it is what depmod turns into modules.dep.
# Debian's .deb ships no modules.dep (it is generated at install time) and busybox
# modinfo wants one, so read the NUL-separated .modinfo strings directly.
module_depends() {
    tr '\0' '\n' <"$1" | sed -n 's/^depends=\([A-Za-z0-9_,-]*\)$/\1/p' | head -1
}

# Copies the modules of MODULE_GROUPS, with their dependencies, from the unpacked
# kernel into the initramfs, uncompressed (busybox insmod may not read .ko.xz/.ko.zst),
# and writes:
#   lib/modules/<kver>/modules.dep   for busybox modprobe, which loads a module's
#                                    dependencies in the reverse of the listed order
#   lib/modules/groups/<group>       the group's modules to modprobe (none if built in)
install_modules() {
    local moddir=$1 stage=$2 kver=$3
    local -A path_of=() builtin=() rel_of=() deps_of=()
    local f n group mods names m closure line
    local dest=$stage/lib/modules/$kver

    # Every module file of the kernel by normalized name (to the kernel, dashes and
    # underscores in module names are the same).
    while IFS= read -r f; do
        n=${f##*/}
        n=${n%%.ko*}
        path_of[${n//-/_}]=${f#"$moddir"/}
    done < <(find "$moddir/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
    while IFS= read -r f; do
        n=${f##*/}
        n=${n%.ko}
        builtin[${n//-/_}]=1
    done <"$moddir/modules.builtin"

    copy_module() {
        local n=${1//-/_} rel dst d
        [ -z "${builtin[$n]:-}" ] || return 0
        [ -z "${rel_of[$n]:-}" ] || return 0
        rel=${path_of[$n]:-}
        [ -n "$rel" ] || die "module $n is neither built in nor shipped by the kernel package"
        dst=$dest/${rel%.ko*}.ko
        mkdir -p "$(dirname "$dst")"
        case "$rel" in
            *.ko) cp "$moddir/$rel" "$dst" ;;
            *.ko.xz) xz -dc "$moddir/$rel" >"$dst" ;;
            *.ko.zst) zstd -qdc "$moddir/$rel" >"$dst" ;;
            *.ko.gz) gzip -dc "$moddir/$rel" >"$dst" ;;
        esac
        rel_of[$n]=${rel%.ko*}.ko
        d=$(module_depends "$dst")
        deps_of[$n]=${d//,/ }
        for d in ${deps_of[$n]}; do
            copy_module "$d"
        done
    }

    # Prints the module's dependency closure in load order (dependencies first, the
    # module itself last), depth first.
    load_order() {
        local -A seen=()
        visit() {
            local n=${1//-/_} d
            [ -z "${builtin[$n]:-}" ] || return 0
            [ "${seen[$n]:-}" != visited ] || return 0
            [ "${seen[$n]:-}" != visiting ] || die "module dependency cycle at $n"
            seen[$n]=visiting
            for d in ${deps_of[$n]}; do
                visit "$d"
            done
            seen[$n]=visited
            echo "$n"
        }
        visit "$1"
    }

    mkdir -p "$dest" "$stage/lib/modules/groups"
    for group in "${MODULE_GROUPS[@]}"; do
        n=${group%%:*}
        mods=${group#*:}
        names=()
        for m in $mods; do
            if [ -n "${builtin[${m//-/_}]:-}" ]; then
                log "module $m: built in"
            else
                copy_module "$m"
                names+=("${m//-/_}")
            fi
        done
        echo "${names[*]}" >"$stage/lib/modules/groups/$n"
        log "modules for $n: $(for m in "${names[@]}"; do load_order "$m"; done | awk '!seen[$0]++' | tr '\n' ' ')"
    done

    : >"$dest/modules.dep"
    for n in $(printf '%s\n' "${!rel_of[@]}" | LC_ALL=C sort); do
        mapfile -t closure < <(load_order "$n")
        line="${rel_of[$n]}:"
        # All but the module itself, most dependent first (modprobe reverses it).
        for ((m = ${#closure[@]} - 2; m >= 0; m--)); do
            line+=" ${rel_of[${closure[m]}]}"
        done
        echo "$line" >>"$dest/modules.dep"
    done
    cp "$moddir/modules.builtin" "$dest/"
}

# Extracts the uncompressed kernel (ELF vmlinux) from Debian's bzImage, for QEMU's PVH
# direct boot: QEMU then enters the kernel at its PVH entry point, skipping the bzImage
# real-mode setup and self-decompression, which take ~0.8 s under TCG (measured; see
# README.md). Succeeds only if the kernel has PVH support and the result checks out;
# otherwise the image boots the bzImage as is.
extract_pvh_kernel() {
    local bzimage=$1 config=$2 out=$3 spec magic tool off absent=
    grep -q '^CONFIG_PVH=y' "$config" || return 1
    # Same approach as the kernel's scripts/extract-vmlinux: find the compressed
    # payload by its magic and decompress from there (trailing bytes are ignored).
    for spec in '\x02\x21\x4c\x18:lz4 -dc' '\x28\xb5\x2f\xfd:zstd -qdc' '\xfd\x37\x7a\x58\x5a\x00:xz -qdc' \
        '\x1f\x8b\x08:gzip -dc' '\x5d\x00\x00:xz -qdc --format=lzma' '\x42\x5a\x68:bzip2 -dc'; do
        magic=${spec%%:*}
        tool=${spec#*:}
        off=$(LC_ALL=C grep -aboP "$magic" "$bzimage" | head -1 | cut -d: -f1) || true
        [ -n "$off" ] || continue
        if ! command -v "${tool%% *}" >/dev/null 2>&1; then
            absent="$absent ${tool%% *}"
            continue
        fi
        tail -c +$((off + 1)) "$bzimage" | $tool >"$out" 2>/dev/null || true
        # An ELF file carrying the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18).
        if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] &&
            LC_ALL=C grep -qaP '\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00' "$out"; then
            return 0
        fi
    done
    rm -f "$out"
    log "no PVH-bootable vmlinux found in the bzImage${absent:+ (not installed:$absent)};" \
        "the image boots the bzImage instead, ~0.8 s slower under TCG"
    return 1
}

# --- initramfs ----------------------------------------------------------------------

build_initramfs() {
    local stage=$1 moddir=$2 kver=$3 out=$4 applet d

    mkdir -p "$stage"/{bin,sbin,usr,etc,proc,sys,dev,run,tmp,data,root,mnt,lib/modules}
    ln -s ../bin "$stage/usr/bin"
    ln -s ../sbin "$stage/usr/sbin"
    cp "$BUSYBOX" "$stage/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
    done
    # The recipe's own files; they win over busybox applets of the same name.
    (cd "$HERE/rootfs" && find . -type f) | while IFS= read -r f; do
        mkdir -p "$stage/$(dirname "$f")"
        rm -f "$stage/$f"
        cp "$HERE/rootfs/$f" "$stage/$f"
    done
    # Mode bits do not depend on how the repository was checked out.
    find "$stage/etc" -type f -exec chmod 644 {} +
    for d in bin sbin etc/udhcpc; do
        find "$stage/$d" -maxdepth 1 -type f ! -name busybox -exec chmod 755 {} +
    done
    chmod 755 "$stage/init"
    chmod 1777 "$stage/tmp"
    chmod 700 "$stage/root"

    # The memory integrity checker (also behind dirty-mem), static like busybox.
    gcc -O2 -static -s -Wall -Wextra -o "$stage/bin/memcheck" "$HERE/src/memcheck.c" ||
        die "cannot compile src/memcheck.c (needs gcc and libc6-dev)"
    chmod 755 "$stage/bin/memcheck"

    install_modules "$moddir" "$stage" "$kver"

    cat >"$stage/etc/nimbus-release" <<EOF
NAME=nimbus-default
VERSION=$VERSION
KERNEL=$kver
EOF

    find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -9 >"$out"
}

# --- base disk ----------------------------------------------------------------------

build_disk() {
    local work=$1 out=$2
    mkdir -p "$work/disk-root"
    echo "nimbus default image" >"$work/disk-root/hello.txt"
    find "$work/disk-root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    # Inode tables and journal are written now (lazy_*_init=0) so that the guest kernel
    # does not zero them in the background after every boot, writing into the overlay.
    truncate -s "$DISK_SIZE" "$work/disk.raw"
    E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -L nimbus-data -U "$DISK_UUID" \
        -E "lazy_itable_init=0,lazy_journal_init=0,nodiscard,root_owner=0:0,hash_seed=$DISK_UUID" \
        -d "$work/disk-root" "$work/disk.raw"
    # mke2fs -d copies each file's ctime, which touch cannot set: pin it too.
    (cd "$work/disk-root" && find . -mindepth 1) | while IFS= read -r f; do
        E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w \
            -R "set_inode_field /${f#./} ctime @$SOURCE_DATE_EPOCH" "$work/disk.raw" >/dev/null 2>&1 ||
            die "debugfs could not set the ctime of $f"
    done
    # convert skips zero blocks, so the qcow2 holds only metadata and hello.txt.
    qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$out"
    rm -f "$work/disk.raw"
}

# Writes a manifest naming the files as PREFIX<name>: PREFIX is "" for the version's
# own image.json and "<version>/" for OUT_DIR/image.json.
write_image_json() {
    local out=$1 kver=$2 kernel=$3 prefix=$4
    cat >"$out" <<EOF
{
  "name": "default",
  "version": "$VERSION",
  "kernel": "$prefix$kernel",
  "initrd": "${prefix}initrd.img",
  "disk": "${prefix}disk.qcow2",
  "cmdline": "$CMDLINE",
  "ready_marker": "$READY_MARKER",
  "os": "debian-cloud-kernel+busybox",
  "kernel_version": "$kver"
}
EOF
}

# Builds this version into a new directory DEST (which must not exist yet): in a
# temporary directory inside OUT_DIR (same file system), renamed to DEST when complete,
# so a failed or interrupted build leaves nothing that looks like a version behind.
build_version() {
    local dest=$1
    WORK=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    local new=$WORK/out
    mkdir -p "$new"

    local deb kroot moddir kver vmlinuz d
    deb=$(fetch_kernel_deb)
    kroot=$WORK/kernel
    dpkg-deb -x "$deb" "$kroot"
    # Newer Debian packages ship modules under /usr/lib (merged /usr).
    moddir=
    for d in "$kroot"/lib/modules/* "$kroot"/usr/lib/modules/*; do
        if [ -d "$d/kernel" ]; then moddir=$d; break; fi
    done
    [ -n "$moddir" ] || die "no modules directory in $(basename "$deb")"
    kver=$(basename "$moddir")
    vmlinuz=$kroot/boot/vmlinuz-$kver
    [ -f "$vmlinuz" ] || die "no vmlinuz-$kver in $(basename "$deb")"
    cp "$vmlinuz" "$new/vmlinuz"
    local kernel_file=vmlinuz
    if extract_pvh_kernel "$vmlinuz" "$kroot/boot/config-$kver" "$new/vmlinux"; then
        kernel_file=vmlinux
    fi

    build_initramfs "$WORK/initramfs" "$moddir" "$kver" "$new/initrd.img"
    build_disk "$WORK" "$new/disk.qcow2"
    # The version's own manifest last: its presence means the version is complete.
    write_image_json "$new/image.json" "$kver" "$kernel_file" ""
    chmod 755 "$new"
    chmod 644 "$new"/*
    mv -T "$new" "$dest"
    rm -rf "$WORK"
    trap - EXIT
    log "built $dest ($(du -sh "$dest" | cut -f1), kernel $kver)"
}

main() {
    VERSION=$(recipe_version)
    if is_up_to_date; then
        log "$OUT_DIR is up to date (version $VERSION)"
        return 0
    fi
    check_tools

    mkdir -p "$OUT_DIR"
    OUT_DIR=$(cd "$OUT_DIR" && pwd)
    DEB_CACHE=${NIMBUS_DEB_CACHE:-$(dirname "$(dirname "$OUT_DIR")")/debs}
    mkdir -p "$DEB_CACHE"

    # Concurrent builds (parallel tests, several agents) wait for each other; the
    # second then finds the image up to date.
    exec 9>"$(dirname "$OUT_DIR")/.$(basename "$OUT_DIR").lock"
    flock 9
    if is_up_to_date; then
        log "$OUT_DIR is up to date (version $VERSION)"
        return 0
    fi

    # Left by a build that was killed (we hold the lock, so none is running).
    rm -rf "$OUT_DIR"/.build.* "$OUT_DIR/.image.json.tmp"

    local dir=$OUT_DIR/$VERSION
    if [ -f "$dir/image.json" ]; then
        # Built before and since superseded (e.g. the recipe went back to this version):
        # its files never change once in place, so it is used as it is.
        log "version $VERSION is already built in $dir"
    elif [ -e "$dir" ]; then
        die "$dir exists but holds no image.json (not made by this script?); remove it"
    else
        log "building version $VERSION into $dir"
        build_version "$dir"
    fi

    # Make it the current version: OUT_DIR/image.json is replaced by a rename, so a
    # reader sees the old manifest or the new one, never a mix. Older versions stay.
    local tmp=$OUT_DIR/.image.json.tmp
    write_image_json "$tmp" "$(manifest_field "$dir/image.json" kernel_version)" \
        "$(manifest_field "$dir/image.json" kernel)" "$VERSION/"
    chmod 644 "$tmp"
    chmod 755 "$OUT_DIR"
    mv -f "$tmp" "$OUT_DIR/image.json"
    log "done: $OUT_DIR/image.json -> version $VERSION"
}

main "$@"
