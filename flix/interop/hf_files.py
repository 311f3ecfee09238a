"""Files of Hugging Face directories: config.json, weights (safetensors / torch bin), writing.

Nothing here downloads anything; every function reads or writes local directories. Reading
safetensors needs only numpy (bfloat16 through ml_dtypes), writing it `safetensors`; reading a
`pytorch_model.bin` needs torch. The `hf` extra installs pinned versions of all of them.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import numpy as np

from flix.checkpoints import atomic_directory
from flix.errors import HFConversionError

CONFIG_JSON = "config.json"
GENERATION_CONFIG_JSON = "generation_config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"

_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                       "BOOL": "bool"}


def read_hf_config(hf_dir: str) -> dict:
  """The `config.json` dict of a transformers directory."""
  path = os.path.join(hf_dir, CONFIG_JSON)
  if not os.path.isfile(path):
    raise HFConversionError(f"{hf_dir}: {CONFIG_JSON} is missing (not a transformers model "
                            "directory?)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Arrays of one safetensors file: read-only views of a memory map (bfloat16 via ml_dtypes)."""
  import ml_dtypes  # Installed with jax.

  data = np.memmap(path, np.uint8, mode="r")  # Tensors are read lazily, as views.
  if len(data) < 8:
    raise HFConversionError(f"{path} is not a safetensors file (too short)")
  (header_len,) = struct.unpack("<Q", data[:8].tobytes())
  try:
    header = json.loads(data[8:8 + header_len].tobytes())
  except ValueError as e:
    raise HFConversionError(f"{path} is not a safetensors file: {e}") from None
  base = 8 + header_len
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype_name = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype_name is None:
      raise HFConversionError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    dtype = ml_dtypes.bfloat16 if dtype_name == "bfloat16" else np.dtype(dtype_name)
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(data, dtype, offset=base + start,
                              count=(end - start) // np.dtype(dtype).itemsize
                              ).reshape(info["shape"])
  return out


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise HFConversionError(f"reading {path} needs torch; install the extras: "
                            "pip install -e '.[hf]' (or convert it to model.safetensors)") from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().float().numpy() for k, v in state.items()}


def read_hf_weights(hf_dir: str) -> dict[str, np.ndarray]:
  """All weights of a transformers directory as float32 numpy arrays `{HF key: array}`.

  Looks for model.safetensors, a sharded model.safetensors.index.json, pytorch_model.bin or
  pytorch_model.bin.index.json, in that order.
  """
  def shards(index_name):
    with open(os.path.join(hf_dir, index_name), encoding="utf-8") as f:
      weight_map = json.load(f)["weight_map"]
    return sorted(set(weight_map.values()))

  if os.path.isfile(os.path.join(hf_dir, SAFETENSORS)):
    files, reader = [SAFETENSORS], read_safetensors
  elif os.path.isfile(os.path.join(hf_dir, SAFETENSORS_INDEX)):
    files, reader = shards(SAFETENSORS_INDEX), read_safetensors
  elif os.path.isfile(os.path.join(hf_dir, TORCH_BIN)):
    files, reader = [TORCH_BIN], _read_torch_bin
  elif os.path.isfile(os.path.join(hf_dir, TORCH_BIN_INDEX)):
    files, reader = shards(TORCH_BIN_INDEX), _read_torch_bin
  else:
    raise HFConversionError(
        f"{hf_dir}: no weights file: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {TORCH_BIN} or "
        f"{TORCH_BIN_INDEX} (nothing is downloaded: the directory must hold the weights)")
  state = {}
  for name in files:
    path = os.path.join(hf_dir, name)
    if not os.path.isfile(path):
      raise HFConversionError(f"{hf_dir}: weights shard {name} is missing")
    state.update(reader(path))
  return {k: np.array(v, np.float32) for k, v in state.items()}  # Copies: no file views.


def write_hf_dir(out_dir: str, json_files: Mapping[str, dict], weights_file: str,
                 tensors: Mapping[str, np.ndarray], *, overwrite: bool = False) -> str:
  """Writes `json_files` ({name: dict}) and `tensors` as safetensors `weights_file` into a new
  directory (atomically: nothing at `out_dir` unless complete); returns its absolute path."""
  from safetensors.numpy import save_file

  with atomic_directory(out_dir, overwrite) as tmp:
    for name, content in json_files.items():
      with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2)
    save_file(dict(tensors), os.path.join(tmp, weights_file), metadata={"format": "pt"})
  return os.path.abspath(out_dir)
