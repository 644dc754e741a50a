#!/usr/bin/env bash
# The lifecycle without a terminal UI (the main job is `plugboard demo`): make a throw-away signing key, pin it in a
# fresh trust store, pack and sign the example bundles, verify and inspect one, show that a
# tampered manifest (granting itself the network) is refused, then run every bundle confined
# in the headless engine under traffic for a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --quiet
plugboard=target/debug/plugboard
work=$(mktemp -d -t plugboard-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT

run() { printf '\n$ %s\n' "$*"; "$@"; }

run "$plugboard" keygen --out "$work/keys" --name demo
run "$plugboard" trust add --trust-store "$work/trust" "$work/keys/demo.pub"
for plugin in hello counter; do
    run "$plugboard" pack "plugins/$plugin/plugin.toml" --library "target/debug/lib$plugin.so" \
        --out "$work/plugins/$plugin" --key "$work/keys/demo.key"
done
run "$plugboard" pack plugins/hello-c/plugin.toml --library target/debug/libhello_c.so \
    --out "$work/plugins/hello-c" --key "$work/keys/demo.key"
run "$plugboard" verify "$work/plugins/hello" --trust-store "$work/trust"
run "$plugboard" inspect "$work/plugins/hello" --trust-store "$work/trust"

printf '\n# tampering: a copy of hello renames itself and grants itself the network after it was signed\n'
cp -r "$work/plugins/hello" "$work/plugins/hello-tampered"
# Renamed, so that the headless run below refuses it for its signature, not as a second `hello`.
sed -i 's/^name = "hello"$/name = "hello-tampered"/' "$work/plugins/hello-tampered/plugin.toml"
printf '\n[capabilities]\nnetwork = true\n' >>"$work/plugins/hello-tampered/plugin.toml"
if run "$plugboard" verify "$work/plugins/hello-tampered" --trust-store "$work/trust"; then
    echo "the tampered bundle verified: this is a bug" >&2
    exit 1
fi
printf '\nrefused, as it must be.\n'

if [ "$(id -u)" -ne 0 ]; then
    printf '\n(skipping the confined run: cgroups and the workers'"'"' uid switch need root)\n'
    exit 0
fi
printf '\n# every bundle in a confined worker, 100 calls/s for 4 s (the tampered one is rejected for its signature)\n'
run "$plugboard" headless --plugins "$work/plugins" --trust-store "$work/trust" \
    --traffic 100 --duration 4s --interval 2s
