#!/usr/bin/env bash
# Soak run (not part of CI; root): 100 sandboxed plugins under traffic, one reloaded every
# 10 s, for 20 minutes; prints open descriptors, cgroups and engine RSS at the start, once
# the sample rings are full and at the end. Override with PLUGBOARD_SOAK_PLUGINS,
# PLUGBOARD_SOAK_RELOAD_S, PLUGBOARD_SOAK_MINUTES.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
exec cargo bench -p plugboard-engine --bench soak
