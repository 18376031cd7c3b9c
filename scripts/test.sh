#!/usr/bin/env bash
# Run the test suite (sets up or reuses the environment first). Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/scripts/setup.sh" test | tail -n 1)"
cd "$root"
exec "$venv/bin/python" -m pytest -q "$@"
