#!/usr/bin/env python3
"""Writes the seed corpora and dictionaries of the libFuzzer targets (docs/fuzzing.md).

    tests/fuzz/make_corpus.py          rewrite tests/fuzz/corpus/<target>/ and tests/fuzz/<target>.dict
    tests/fuzz/make_corpus.py --check  exit 1 if the committed files differ from what this writes

Seeds are small valid inputs (valid-*) and near misses (bad-*: one thing wrong each), written from
the formats in docs/formats.md with the standard library only (no torch, no build needed).
"""
import json
import re
import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# file dtype -> element bytes
DTYPES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1, "BOOL": 1,
          "F8_E4M3": 1, "F8_E5M2": 1}


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, data bytes or None for a counting pattern), in file order."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, data in tensors:
        nbytes = numel(shape) * DTYPES[dtype]
        if data is None:
            data = bytes((i * 7 + 1) % (2 if dtype == "BOOL" else 251) for i in range(nbytes))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def raw_safetensors(header_text, data=b"", length=None):
    text = header_text.encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def safetensors_seeds():
    every = [(f"t.{d.lower()}", d, [2, 3], None) for d in DTYPES]  # widest first, as the writer orders them
    f32 = [("w", "F32", [2, 3], struct.pack("<6f", 1, -2, 0.5, 3e38, -0.0, 1e-45))]
    return {
        "valid-f32.safetensors": safetensors(f32),
        "valid-every-dtype.safetensors": safetensors(every, {"format": "trustep.checkpoint", "step": "3"}),
        "valid-empty.safetensors": safetensors([]),
        "valid-metadata-only.safetensors": safetensors([], {"note": "no tensors"}),
        "valid-zero-sized.safetensors": safetensors([("s", "F32", [], None), ("z", "I64", [0, 4], b""),
                                                     ("one", "U8", [1, 1, 1], None)]),
        "valid-unpadded.safetensors": safetensors([("b", "BF16", [4], None), ("m", "BOOL", [3], b"\x01\x00\x01")],
                                                  {"writer": "another tool"}, pad=False),
        "bad-truncated.safetensors": safetensors(f32)[:-3],
        "bad-header-length.safetensors": raw_safetensors("{}", length=1 << 40),
        "bad-json.safetensors": raw_safetensors('{"w":{"dtype":"F32",'),
        "bad-number-overflow.safetensors": raw_safetensors(
            '{"w":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}}', b"\0" * 4),
        "bad-gap.safetensors": raw_safetensors(
            '{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}',
            b"\0" * 8),
        "bad-overlap.safetensors": raw_safetensors(
            '{"a":{"dtype":"U8","shape":[6],"data_offsets":[0,6]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}',
            b"\0" * 8),
        "bad-size.safetensors": raw_safetensors('{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', b"\0" * 8),
        "bad-dtype.safetensors": raw_safetensors('{"w":{"dtype":"U16","shape":[2],"data_offsets":[0,4]}}', b"\0" * 4),
        "bad-bool-byte.safetensors": raw_safetensors('{"m":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}}',
                                                     b"\x01\x02"),
        "bad-duplicate.safetensors": raw_safetensors(
            '{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
            b"\0"),
        "bad-huge-shape.safetensors": raw_safetensors(
            '{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}', b"\0" * 8),
        "bad-huge-empty-shape.safetensors": raw_safetensors(
            '{"w":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}}'),
        "bad-metadata.safetensors": raw_safetensors('{"__metadata__":{"step":3}}'),
    }


# ---- checkpoints: the layout save_checkpoint writes (src/train/checkpoint.h), as one input file ----

def shard_name(rank, world):
    return f"shard-{rank:05d}-of-{world:05d}.safetensors"


def checkpoint(files, world, step=1, meta=None, words="", lie=None, unlisted=()):
    """files: (name, rank, bytes, tensor names or None), listed in the manifest; `lie(entry)` may spoil an
    entry. unlisted: (name, bytes) of files the manifest does not list (`latest`)."""
    entries = []
    for name, rank, data, tensors in files:
        entry = {"name": name, "rank": rank, "bytes": len(data), "crc32": zlib.crc32(data)}
        if tensors is not None:
            entry["tensors"] = sorted(tensors)
        if lie:
            lie(entry)
        entries.append(entry)
    manifest = {"format": "trustep.checkpoint", "version": 1, "step": step, "world_size": world, "checksum": "crc32",
                "meta": {"model": {"hidden": 8, "experts": 4}, "loss": 2.5} if meta is None else meta,
                "files": entries}
    parts = [words] if words else []
    parts.append("==> manifest.json <==\n" + json.dumps(manifest, indent=2))
    out = "\n".join(parts).encode()
    for name, data in [(f[0], f[2]) for f in files] + list(unlisted):
        out += b"\n==> " + name.encode() + b" <==\n" + data
    return out


def checkpoint_seeds():
    def file_meta(world, rank=None):
        m = {"format": "trustep.checkpoint", "step": "1", "world_size": str(world)}
        if rank is not None:
            m["rank"] = str(rank)
        return m

    replicated = safetensors([("embed", "F32", [4, 2], None), ("norm", "BF16", [2], None)], file_meta(1))
    shard0 = safetensors([("experts.0.w", "F32", [2, 2], None), ("experts.1.w", "F32", [2, 2], None)], file_meta(2, 0))
    shard1 = safetensors([("experts.2.w", "F32", [2, 2], None), ("experts.3.w", "F32", [2, 2], None)], file_meta(2, 1))
    routing = safetensors([("trust.value", "F32", [1, 2, 4], None)])
    world1 = [("replicated.safetensors", -1, replicated, ["embed", "norm"]),
              (shard_name(0, 1), 0, safetensors([("experts.0.w", "F16", [3], None)], file_meta(1, 0)), ["experts.0.w"])]
    world2 = [("replicated.safetensors", -1, replicated, ["embed", "norm"]),
              (shard_name(0, 2), 0, shard0, ["experts.0.w", "experts.1.w"]),
              (shard_name(1, 2), 1, shard1, ["experts.2.w", "experts.3.w"]),
              ("routing.safetensors", -1, routing, ["trust.value"])]

    def zero_sums(entry):
        entry["bytes"], entry["crc32"] = 0, 0

    def bad_crc(entry):
        entry["crc32"] ^= 1

    def shard_lists_twice(entry):
        if entry["rank"] == 0:
            entry["tensors"].append(entry["tensors"][0])

    def shard_lists_absent(entry):
        if entry["rank"] == 1:
            entry["tensors"].append("experts.9.w")

    return {
        "valid-world1.txt": checkpoint(world1, 1),
        "valid-world2.txt": checkpoint(world2, 2, step=200),
        "valid-root-latest.txt": checkpoint(world1, 1, words="root", unlisted=[("latest", b"step-00000001\n")]),
        "valid-empty-maps.txt": checkpoint([("replicated.safetensors", -1, safetensors([], file_meta(1)), []),
                                            (shard_name(0, 1), 0, safetensors([], file_meta(1, 0)), [])], 1, meta=None),
        "valid-fixup.txt": checkpoint(world2, 2, words="fixup", lie=zero_sums),
        "valid-nocrc.txt": checkpoint(world1, 1, words="nocrc", lie=bad_crc),
        "bad-crc.txt": checkpoint(world1, 1, lie=bad_crc),
        "bad-size.txt": checkpoint(world1, 1, lie=zero_sums),
        "bad-missing-shard.txt": checkpoint(world1, 2),
        "bad-tensor-not-in-shard.txt": checkpoint(world2, 2, lie=shard_lists_absent),
        "bad-tensor-twice.txt": checkpoint(world1, 1, lie=shard_lists_twice),
        "bad-version.txt": checkpoint(world1, 1).replace(b'"version": 1', b'"version": 2'),
        "bad-json.txt": checkpoint(world1, 1).replace(b'"files": [', b'"files": [[', 1),
        "bad-latest.txt": checkpoint(world1, 1, words="root", unlisted=[("latest", b"../step-00000001\n")]),
        "bad-shard-data.txt": checkpoint(world1[:1] + [(shard_name(0, 1), 0, shard0[:-1], ["experts.0.w"])], 1),
    }


# ---- config files: the .ini path of parse_options ----

def config_seeds():
    seeds = {f"preset-{p.stem}.ini": p.read_bytes() for p in sorted((ROOT / "configs").glob("*.ini"))}
    seeds.update({
        "valid-top-level.ini": b"steps = 10\nlr = 0.001\nbackend = self\n",
        "valid-sections.ini": b"log-level = warn\n[train]\nexperts = 4\ntop-k = 1\n[bench comm]\niters = 2\n"
                              b"[infer]\nprompt = hi\n[bench layer]\nnot-a-train-key = 1\n",
        "valid-lists.ini": b"sizes = 4k,64K,1m,2G,512\nskew = uniform,hot\npoison-expert = 3,5\n",
        "valid-comments.ini": b"# comment\n\n  hidden = 32   # trailing\n\t[train]\nno-plots = true\ncheck-finite=1\n",
        "valid-crlf.ini": b"steps = 5\r\n[train]\r\nbatch = 2\r\n",
        "bad-unknown-key.ini": b"[train]\nno-such-key = 1\n",
        "bad-unknown-section.ini": b"[trian]\nsteps = 3\n",
        "bad-unterminated-section.ini": b"[train\nsteps = 3\n",
        "bad-value.ini": b"steps = many\n",
        "bad-twice.ini": b"steps = 1\n[train]\nsteps = 2\n",
        "bad-size.ini": b"sizes = 4x,0,-1\n",
        "bad-empty-list-item.ini": b"skew = uniform,,hot\n",
        "bad-syntax.ini": b"steps\n",
        "bad-placeholder-value.ini": b"steps = %value%\n",
        "bad-placeholder-key.ini": b"%canonical_option% = 1\n",
        "bad-size-overflow.ini": b"sizes = 4k,9999999999999g\n",
    })
    return seeds


# ---- dictionaries (libFuzzer -dict): the tokens each parser compares against ----

def dict_file(tokens):
    def quoted(t):  # libFuzzer's escapes: \\, \" and \xNN
        return '"' + "".join(c if " " <= c <= "~" and c not in '\\"' else
                             ("\\" + c if c in '\\"' else f"\\x{ord(c):02X}") for c in t) + '"'
    return "".join(quoted(t) + "\n" for t in sorted(set(tokens))).encode()


def dictionaries():
    option_names = re.findall(r'\(\s*"([a-z0-9-]+)(?:,[a-z])?"', (ROOT / "src/cli/train_options.cpp").read_text()
                              + (ROOT / "src/core/options.cpp").read_text())
    sections = ["bench comm", "bench layer", "bench select", "bench train", "infer", "inspect", "train"]
    config = option_names + ["sizes", "skew"] + [f"[{s}]" for s in sections] + ["=", "#", "k", "M", "G", ","]
    json_tokens = ['"', ":", ",", "[", "]", "{", "}", "null", "true", "-1", "0", "1e400", "4611686018427387904",
                   "18446744073709551616"]
    st = ['"dtype"', '"shape"', '"data_offsets"', '"__metadata__"'] + [f'"{d}"' for d in DTYPES] + json_tokens
    ck = (['"format"', '"trustep.checkpoint"', '"version"', '"step"', '"world_size"', '"checksum"', '"crc32"',
           '"meta"', '"files"', '"name"', '"rank"', '"bytes"', '"tensors"', "\n==> ", " <==\n", "manifest.json",
           "replicated.safetensors", "latest", "fixup", "nocrc", "root", shard_name(0, 2), shard_name(1, 2)]
          + st)
    return {"config.dict": dict_file(config), "safetensors.dict": dict_file(st), "checkpoint.dict": dict_file(ck)}


def outputs():
    files = {}
    for target, seeds in (("config", config_seeds()), ("checkpoint", checkpoint_seeds()),
                          ("safetensors", safetensors_seeds())):
        for name, data in seeds.items():
            files[f"corpus/{target}/{name}"] = data
    files.update(dictionaries())
    return files


def main():
    files = outputs()
    if sys.argv[1:] == ["--check"]:
        stale = [n for n, d in files.items() if not (HERE / n).is_file() or (HERE / n).read_bytes() != d]
        extra = [str(p.relative_to(HERE)) for p in (HERE / "corpus").rglob("*")
                 if p.is_file() and str(p.relative_to(HERE)) not in files]
        for n in stale + extra:
            print(f"make_corpus: tests/fuzz/{n} is not what tests/fuzz/make_corpus.py writes; rerun it")
        return 1 if stale or extra else 0
    for name, data in files.items():
        path = HERE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for p in (HERE / "corpus").rglob("*"):
        if p.is_file() and str(p.relative_to(HERE)) not in files:
            p.unlink()
    print(f"make_corpus: wrote {len(files)} files under tests/fuzz/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
