#!/usr/bin/env bash
# Regenerate constraints.txt from a clean virtual environment, so it pins exactly the studio's dependency closure
# (what `pip install -e ".[test]"` installs after PyTorch) and nothing else from the machine it was run on.
#   bash scripts/freeze-constraints.sh            keep the versions pinned now; drop packages no longer needed
#   bash scripts/freeze-constraints.sh --upgrade  take the newest releases that fit pyproject.toml (then run the
#                                                 whole suite before committing the result)
# It rewrites constraints.txt in place; review with `git diff constraints.txt`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${STUDIO_TORCH_VERSION:-2.13.0}
use_pins=(-c constraints.txt)
[ "${1:-}" = "--upgrade" ] && use_pins=()

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
pip_install() { "$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --progress-bar off "$@"; }
pip_install "torch==$TORCH"   # first, as scripts/setup.sh does, so nothing pulls a second build
pip_install "${use_pins[@]}" -e ".[test]"

{
  cat <<'EOF'
# The versions the whole test suite last passed with; scripts/setup.sh installs with `-c constraints.txt`.
# Only the studio's dependency closure: what `pip install -e ".[test]"` installs into a clean venv after PyTorch
# (torch, nvidia-*, triton, pip, setuptools and wheel are left out: setup.sh installs torch itself).
# Regenerate with `bash scripts/freeze-constraints.sh` (add --upgrade to take new releases), which does:
#   python3 -m venv /tmp/v && /tmp/v/bin/pip install torch==2.13.0
#   /tmp/v/bin/pip install -c constraints.txt -e ".[test]"      # without -c for --upgrade
#   /tmp/v/bin/pip freeze --exclude-editable | grep -viE "^(torch|nvidia-|triton|pip|setuptools|wheel)=="
# Sorted by name, as pip freeze lists them. Frozen on Linux x86_64, Python 3.11 (another Python may add a
# few conditional packages, e.g. tomli on 3.10, which then install unpinned).
EOF
  # llama-cpp-python (built by scripts/setup.sh, not a dependency in pyproject.toml) and what it adds
  { "$tmp/venv/bin/python" -m pip freeze --exclude-editable; grep -E "^(diskcache|llama_cpp_python)==" constraints.txt; } \
    | grep -viE "^(torch|nvidia-|triton|pip|setuptools|wheel)==" | sort -f -u
} >"$tmp/constraints.txt"
mv "$tmp/constraints.txt" constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins" >&2
