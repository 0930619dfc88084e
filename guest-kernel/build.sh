#!/bin/sh
# amphi guest kernel recipe. `amphi kernel build` runs this with:
#   $1 the Debian linux-source tarball, $2 the config fragment, $3 the output dir.
# The output dir appears only when the build succeeded (built in $3.build,
# collected in $3.tmp, renamed). Needs make, gcc, flex, bison, bc, libelf-dev.
set -eu
src_tar=$1 frag=$2 out=$3
work=$out.build
rm -rf "$work" "$out.tmp"
mkdir -p "$work"
tar -xf "$src_tar" -C "$work" --strip-components=1
cd "$work"
make -s ARCH=x86_64 KCONFIG_ALLCONFIG="$frag" allnoconfig
# Every option the fragment names must be in the final config as asked:
# Kconfig silently drops an option whose dependencies are missing.
grep -E '^(CONFIG_[A-Z0-9_]+=.*|# CONFIG_[A-Z0-9_]+ is not set)$' "$frag" | while read -r line; do
    case $line in
    "# "*)
        opt=${line#"# "}
        opt=${opt%" is not set"}
        if grep -q "^$opt=" .config; then
            echo "guest kernel config: $opt is set but the fragment turns it off" >&2
            exit 1
        fi ;;
    *)
        if ! grep -qx "$line" .config; then
            echo "guest kernel config: '$line' did not stick (a dependency is missing)" >&2
            exit 1
        fi ;;
    esac
done
make -j"$(nproc)" ARCH=x86_64 vmlinux bzImage
mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp arch/x86/boot/bzImage "$out.tmp/bzImage"
cp .config "$out.tmp/config"
make -s ARCH=x86_64 kernelversion >"$out.tmp/version"
mv "$out.tmp" "$out"
cd /
rm -rf "$work"
