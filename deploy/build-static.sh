#!/bin/sh
# The container image's build step without Docker: the static musl binary of deploy/Dockerfile, then checks that
# it is statically linked and judges the bundled demo exactly as the ordinary build does.
#   deploy/build-static.sh            (needs: rustup target add x86_64-unknown-linux-musl; apt-get install musl-tools)
set -eu
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
CARGO_PROFILE_RELEASE_STRIP=true cargo build --release --locked --target "$target" --bin weir
static=target/$target/release/weir
cargo build --release --locked --bin weir
if ldd "$static" 2>&1 | grep -q '=>'; then
    echo "build-static: $static links shared libraries:" >&2
    ldd "$static" >&2
    exit 1
fi
demo="analyze pcaps/demo.pcap --cluster pcaps/demo.cluster.yaml --format json"
# shellcheck disable=SC2086
"$static" $demo > "target/$target/demo.json"
# shellcheck disable=SC2086
target/release/weir $demo > target/release/demo.json
cmp "target/$target/demo.json" target/release/demo.json
echo "build-static: $static is static ($(du -h "$static" | cut -f1)) and gives the same demo report"
