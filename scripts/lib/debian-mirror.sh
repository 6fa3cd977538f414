# Sourced by scripts that need Debian packages from the network (scripts/install-deps.sh,
# guest/build-debian.sh). Never name a mirror in the project: take this machine's.

# Prints the Debian mirror URI already configured on this machine (deb822 or one-line
# format), not the security archive; nothing when there is none.
debian_mirror() {
    local uri=""
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' \
            /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file|ftp):/) {print $i; exit}}' \
            /etc/apt/sources.list | head -1)
    fi
    echo "$uri"
}
