#!/usr/bin/env bash
# One-command GPU benchmark: `babelrl bench` (prefill, decode, teacher-forced log-probs, GEMM) and the
# PyTorch CUDA peer (scripts/bench_pytorch.py) on the same model and shapes, printed as one Markdown table
# (scripts/bench_table.py). Meant for a machine with a GPU, PyTorch and transformers but no network, so
# everything else travels with the working tree and nothing is downloaded:
#
#   * the babelrl release binary: $BABELRL_BIN, else target/release/babelrl (built with cargo here when
#     cargo is present and the binary is not);
#   * a Vulkan loader: the system's, else the Debian packages in .gl/ (libvulkan1 …, fetched beforehand by
#     `apt-get download`; unpacked into / when no libvulkan.so.1 is found); the NVIDIA driver's ICD is
#     used when the loader finds none of its own;
#   * the model: --model PATH (GGUF or HF folder) when it travels; otherwise a model with the shapes of
#     scripts/bench_models/NAME.json (--shapes NAME, default smollm2-135m) and seeded random float16
#     weights, written by the peer's script on that machine — speed does not depend on the values, and
#     the real SmolLM2 file (98 MB) is larger than what some remote runners carry.
#
# Usage: scripts/bench_gpu.sh [--model PATH | --shapes smollm2-135m|qwen2.5-0.5b] [babelrl bench options]
# Environment: BABELRL_BIN, BABELRL_PEER_PYTHON (default python3), BENCH_OUT (folder for the JSON and logs;
# default a temporary folder), BENCH_PEER_DEVICE (cuda or cpu; default cuda when torch sees a GPU).
# Every side gets a time limit (BENCH_STEP_TIMEOUT seconds, default 120) so the whole run stays within
# five minutes; a side that fails or runs out is reported and the table shows "—" for it.
set -uo pipefail
cd "$(dirname "$0")/.."
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

model=""
shapes="smollm2-135m"
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --shapes) shapes="$2"; shift 2 ;;
    *) pass+=("$1"); shift ;;
  esac
done
out="${BENCH_OUT:-$(mktemp -d)}"
mkdir -p "$out"
limit="${BENCH_STEP_TIMEOUT:-120}"
py="${BABELRL_PEER_PYTHON:-python3}"
say() { echo "bench_gpu: $*" >&2; }

# Vulkan loader and driver.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
  if ls .gl/*.deb >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "no libvulkan.so.1: unpacking the loader packages in .gl/"
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  else
    say "no Vulkan loader (libvulkan.so.1) and no .gl/*.deb to unpack: babelrl cannot reach the GPU"
  fi
fi
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nv_icd" ] && ! ls /usr/share/vulkan/icd.d/nvidia*.json >/dev/null 2>&1 \
   && ! ls /etc/vulkan/icd.d/nvidia*.json >/dev/null 2>&1; then
  export VK_DRIVER_FILES="$nv_icd"
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi

# The binary.
bin="${BABELRL_BIN:-target/release/babelrl}"
if [ ! -x "$bin" ] && command -v cargo >/dev/null; then
  say "building $bin"
  cargo build --release -q -p babelrl --bin babelrl || exit 1
fi
[ -x "$bin" ] || { say "no babelrl binary at $bin (set BABELRL_BIN or build with cargo build --release)"; exit 1; }

# The model.
if [ -z "$model" ]; then
  cfg="scripts/bench_models/$shapes.json"
  [ -f "$cfg" ] || { say "no shapes file $cfg (see scripts/bench_models/)"; exit 1; }
  model="$out/random-$shapes"
  if [ ! -f "$model/config.json" ]; then
    "$py" scripts/bench_pytorch.py --make-random-model "$cfg" "$model" || { say "could not write $model"; exit 1; }
  fi
fi

device="${BENCH_PEER_DEVICE:-$("$py" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo none)}"
[ "$device" = none ] && say "no python with torch at $py: the peer is skipped"
[ "$device" = cpu ] && say "torch sees no CUDA device: the peer runs on the CPU"

"$bin" info > "$out/info.txt" 2>&1 || true
say "babelrl bench on $model (log: $out/babelrl.log)"
timeout "$limit" "$bin" bench --model "$model" --json "$out/babelrl.json" "${pass[@]}" > "$out/babelrl.log" 2>&1 \
  || { say "babelrl bench failed or ran out of time; last lines:"; tail -5 "$out/babelrl.log" >&2; }
if [ "$device" != none ]; then
  say "PyTorch peer on $device (log: $out/peer.log)"
  timeout "$limit" "$py" scripts/bench_pytorch.py --model "$model" --device "$device" --json "$out/peer.json" \
    "${pass[@]}" > "$out/peer.log" 2>&1 \
    || { say "the peer failed or ran out of time; last lines:"; tail -5 "$out/peer.log" >&2; }
fi
for side in babelrl peer; do
  [ -f "$out/$side.json" ] || echo '{"meta": {"engine": "'"$side"' (no result)"}, "figures": {}}' > "$out/$side.json"
done
echo "adapters seen by babelrl:"; grep -i -E 'adapter|name' "$out/info.txt" | head -5
echo
python3 scripts/bench_table.py "$out/babelrl.json" "$out/peer.json"
