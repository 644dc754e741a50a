#!/usr/bin/env bash
# Plugboard's main job until the dashboard lands: make a throw-away signing key, pin it in a
# fresh trust store, pack and sign the `hello` example bundle, verify and inspect it, then
# show that a tampered manifest (granting itself the network) is refused.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --quiet
plugboard=target/debug/plugboard
work=$(mktemp -d -t plugboard-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

run() { printf '\n$ %s\n' "$*"; "$@"; }

run "$plugboard" keygen --out "$work/keys" --name demo
run "$plugboard" trust add --trust-store "$work/trust" "$work/keys/demo.pub"
run "$plugboard" pack plugins/hello/plugin.toml --library target/debug/libhello.so \
    --out "$work/hello" --key "$work/keys/demo.key"
run "$plugboard" verify "$work/hello" --trust-store "$work/trust"
run "$plugboard" inspect "$work/hello" --trust-store "$work/trust"

printf '\n# tampering: the bundle grants itself the network after it was signed\n'
printf '\n[capabilities]\nnetwork = true\n' >>"$work/hello/plugin.toml"
if run "$plugboard" verify "$work/hello" --trust-store "$work/trust"; then
    echo "the tampered bundle verified: this is a bug" >&2
    exit 1
fi
printf '\nrefused, as it must be.\n'
