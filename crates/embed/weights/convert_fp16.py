#!/usr/bin/env python3
"""Writes the shipped MobileNetV2 weights: the float32 torchvision ImageNet weights of
../shared/models in half precision (wtb-embed reads them back as float32).

Every floating-point tensor is rounded to float16 (round to nearest even); other tensors are
kept. The output's metadata names the source file and its sha256. Deterministic: the same
source gives the same bytes.

    python3 -m venv /tmp/w && /tmp/w/bin/pip install numpy safetensors
    /tmp/w/bin/python crates/embed/weights/convert_fp16.py [--source FILE]
"""
import argparse
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[3] / "shared" / "models" / "mobilenet_v2_torchvision_imagenet1k.safetensors"
OUT = HERE / "mobilenet_v2_imagenet1k_fp16.safetensors"


DTYPES = {np.dtype("float16"): "F16", np.dtype("float32"): "F32", np.dtype("int64"): "I64"}


def save_sorted(tensors, path, metadata):
    """A safetensors file with its header keys sorted (the library writes them in hash
    order, so the same tensors would give other bytes)."""
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name]).astype(tensors[name].dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": DTYPES[tensors[name].dtype], "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default=str(DEFAULT_SOURCE))
    args = parser.parse_args()
    source = Path(args.source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    tensors = load_file(str(source))
    half = {}
    for name in sorted(tensors):
        value = tensors[name]
        half[name] = value.astype(np.float16) if value.dtype.kind == "f" else value
        if value.dtype.kind == "f":
            back = half[name].astype(np.float32)
            if not np.all(np.isfinite(back)):
                raise SystemExit(f"{name}: a value does not fit float16")
    metadata = {
        "format": "pt",
        "source": source.name,
        "source_sha256": digest,
        "conversion": "float32 -> float16, round to nearest even (convert_fp16.py)",
        "license": "BSD-3-Clause (torchvision; see LICENSE beside this file)",
    }
    save_sorted(half, OUT, metadata)
    print(f"{OUT.name}: {OUT.stat().st_size / 1e6:.1f} MB, "
          f"sha256 {hashlib.sha256(OUT.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
