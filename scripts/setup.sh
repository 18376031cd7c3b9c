#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install what a job needs.
#   setup.sh demo   vfsearch and what the demo runs (index, search, the web app, the map)
#   setup.sh test   plus every optional part and the test tools, and Debian's chromium
#   VFS_FRESH=1      remove and rebuild the environment (CI does this)
#   VFS_VENV=DIR     where the environment lives (default: .venv in the repository)
#   VFS_NO_BROWSER=1 skip installing Debian's chromium (browser tests are then skipped)
# Prints the environment's path on its last line.
set -euo pipefail
profile="${1:-test}"
case "$profile" in demo|test) ;; *) echo "setup: profile is 'demo' or 'test'" >&2; exit 2 ;; esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VFS_VENV:-$root/.venv}"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3

if [[ "${VFS_FRESH:-0}" == "1" && -d "$venv" ]]; then
  echo "setup: removing $venv (VFS_FRESH=1)" >&2
  rm -rf "$venv"
fi
if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup: creating $venv" >&2
  "$py" -m venv "$venv"
fi
want="$(cat "$root/pyproject.toml" "$root/scripts/setup.sh" | sha256sum | cut -c1-16)"
quiet() { "$@" 2> >(grep -v "is ignored" >&2); }
stamp_ok() { [[ -f "$venv/.vfsearch-$1" && "$(cat "$venv/.vfsearch-$1")" == "$want" ]]; }
if ! stamp_ok "$profile" && ! { [[ "$profile" == "demo" ]] && stamp_ok test; }; then
  echo "setup: installing vfsearch ($profile) into $venv" >&2
  quiet "$venv/bin/python" -m pip install --quiet --upgrade pip
  # torch is pinned to the local CPU build (torch==2.13.0); installing it first keeps pip from
  # resolving a multi-GB CUDA build for it.
  quiet "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
  if [[ "$profile" == "demo" ]]; then
    quiet "$venv/bin/python" -m pip install --quiet -e "$root"
  else
    quiet "$venv/bin/python" -m pip install --quiet -e "$root[dev]"
    quiet "$venv/bin/python" -m pip install --quiet --no-deps facenet-pytorch  # MTCNN: old pins
  fi
  echo "$want" > "$venv/.vfsearch-$profile"
fi

# Browser for the end-to-end tests: Debian's chromium (Playwright cannot download its own here).
if [[ "$profile" == "test" && "${VFS_NO_BROWSER:-0}" != "1" ]] && ! command -v chromium >/dev/null 2>&1; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian chromium for browser tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; browser tests will be skipped" >&2
  else
    echo "setup: chromium not found and not root; browser tests will be skipped" >&2
  fi
fi
echo "$venv"
