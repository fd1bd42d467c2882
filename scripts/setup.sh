#!/usr/bin/env bash
# Set up i2cr on a fresh Debian/Ubuntu machine: Tesseract, a virtualenv in .venv with torch,
# llama-cpp-python (built once with portable CPU flags) and i2cr with every extra and test tool.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
WHEELS=${I2CR_WHEEL_CACHE:-$HOME/.cache/i2cr-wheels}

# System packages: Tesseract (OCR tool) and Chromium + ChromeDriver (the trace page's browser test)
if ! command -v tesseract >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq tesseract-ocr tesseract-ocr-eng \
    chromium chromium-driver >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch and torchvision in versions that import together (open_clip needs torchvision)
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"

# llama.cpp's native build can pick CPU kernels (AMX/AVX-512) that crash on some virtual CPUs;
# build a portable AVX2 wheel once and reuse it.
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  mkdir -p "$WHEELS"
  echo "building llama-cpp-python $LLAMA_VERSION (about 5 minutes, once)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF" \
    .venv/bin/pip wheel -q --no-deps --no-cache-dir -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
fi
.venv/bin/pip install -q "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
.venv/bin/pip install -q -e ".[all,test]"
echo "i2cr is set up in .venv"
