"""T5X checkpoints -> flix params, without t5x (msgpack read with flax, arrays with tensorstore).

T5X writes one msgpack file, `flax.serialization.to_bytes({"version": V, "optimizer": state})`,
where `state` is the train state's dict: `{"target": params, "state": {"step": ..., "param_states":
optimizer state}}` (plain flax checkpoints, version 0, hold that dict at the top level). Two
layouts:

    msgpack      a single file whose every leaf is an array (the older layout, e.g. T5X's
                 testdata/test_t5_tiny.checkpoint_0); flax splits arrays over 1 GiB into chunks
                 and `msgpack_restore` joins them again.
    tensorstore  a directory CKPT (checkpoint_<step>) holding CKPT/checkpoint, the msgpack file,
                 whose partitioned leaves are tensorstore specs
                     {"driver": "zarr", "dtype": "bfloat16",
                      "kvstore": {"driver": "file",
                                  "path": "target.encoder.layers_0.mlp.wo.kernel"},
                      "metadata": {"shape": [...], "chunks": [...], "compressor": {"id": "gzip"}}}
                 with `kvstore.path` relative to CKPT (driver "gfile" or "gcs" when written on
                 Google's storage: read from CKPT all the same), plus one directory of zarr
                 chunks per array (CKPT/target.encoder.layers_0.mlp.wo.kernel/0.0, ...). The
                 directory may lack `.zarray` files (the metadata in the spec is then used).
                 Leaves T5X did not partition stay inline arrays in the msgpack.

The parameter tree (T5X's names, which flix's T5 shares: token_embedder/embedding `[vocab, emb]`,
encoder/layers_i/attention/query/kernel `[emb, heads * head_dim]`, encoder/relpos_bias/
rel_embedding `[heads, buckets]`, .../mlp/wi_0/kernel `[emb, mlp]`, ...) is `optimizer/target`
(or `target`); a checkpoint whose target is empty is read from `state/param_states`, where some
of T5X's own test checkpoints keep their arrays. Optimizer state is never read.

    config, params = load_t5x("mt5_base/checkpoint_1000000")   # T5Config inferred from shapes
    config, params = load_t5x(path, model_config)               # shapes checked against it
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
from typing import Any, Iterator, Mapping

import numpy as np

from flix.errors import CheckpointError
from flix.models.t5 import T5, T5Config, abstract_params

CHECKPOINT_FILE = "checkpoint"
# Where T5X versions keep the parameters, in the order tried (relative to the top level).
TARGET_LOCATIONS = (("optimizer", "target"), ("target",))
PARAM_STATE_LOCATIONS = (("optimizer", "state", "param_states"), ("state", "param_states"))
FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64")
# kvstore drivers whose path is read from the local checkpoint directory.
LOCAL_DRIVERS = ("file", "gfile", "gcs")
_MAX_NAMED = 5

Path = tuple[str, ...]


class T5XCheckpointError(CheckpointError):
  """A T5X checkpoint that is missing, unreadable, or does not fit the flix model."""


# -- the msgpack file ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class T5XCheckpoint:
  """A T5X checkpoint's msgpack contents; array leaves inline (numpy) or tensorstore specs (dict).

  `file` is the msgpack file, `directory` the directory relative kvstore paths resolve against.
  """

  file: str
  directory: str
  version: int
  contents: dict

  @property
  def layout(self) -> str:
    """"tensorstore" if any leaf is a tensorstore spec, else "msgpack"."""
    return "tensorstore" if any(is_spec(v) for v in flatten(self.contents).values()) else "msgpack"

  def describe(self) -> str:
    location, params = find_params(self)
    leaves = flatten(params)
    n_specs = sum(is_spec(v) for v in leaves.values())
    return (f"T5X checkpoint {self.file} (version {self.version}, {self.layout} layout; "
            f"{len(leaves)} parameter arrays under {join(location)}, {n_specs} of them in "
            "tensorstore)")


def locate(path: str) -> tuple[str, str]:
  """(msgpack file, directory) of a checkpoint directory (CKPT/checkpoint) or a msgpack file."""
  if not os.path.exists(path):
    raise T5XCheckpointError(f"{path}: no such file or directory (expected a T5X checkpoint "
                             f"directory holding '{CHECKPOINT_FILE}' or a msgpack checkpoint "
                             "file)")
  path = os.path.abspath(path)
  if os.path.isfile(path):
    return path, os.path.dirname(path)
  file = os.path.join(path, CHECKPOINT_FILE)
  if os.path.isfile(file):
    return file, path
  steps = sorted((d for d in os.listdir(path) if d.startswith("checkpoint_")
                  and os.path.isfile(os.path.join(path, d, CHECKPOINT_FILE))),
                 key=lambda d: (len(d), d))
  hint = f"; it holds {', '.join(steps[-3:])}: pass one of those" if steps else ""
  raise T5XCheckpointError(f"{path} is not a T5X checkpoint directory: {file} is missing{hint}")


def open_checkpoint(path: str) -> T5XCheckpoint:
  """Reads the msgpack file of a T5X checkpoint (directory or single file); tensorstore arrays
  are not read yet."""
  from flax import serialization

  file, directory = locate(path)
  with open(file, "rb") as f:
    raw = f.read()
  if raw.startswith(b"model_checkpoint_path"):
    raise T5XCheckpointError(f"{file} is a TensorFlow checkpoint index, not a T5X checkpoint "
                             "(convert it with T5X's convert_tf_checkpoint first)")
  try:
    contents = serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several unrelated types for foreign bytes.
    raise T5XCheckpointError(f"{file} is not a T5X checkpoint: not a flax msgpack file "
                             f"({type(e).__name__}: {_first_line(e)})") from None
  if not isinstance(contents, dict):
    raise T5XCheckpointError(f"{file} is not a T5X checkpoint: its msgpack holds a "
                             f"{type(contents).__name__}, expected a dict")
  version = int(np.asarray(contents.get("version", 0)))
  return T5XCheckpoint(file, directory, version, contents)


# -- trees --------------------------------------------------------------------------------------
def is_spec(node: Any) -> bool:
  """Whether a msgpack leaf is a tensorstore spec (a dict with driver, kvstore and metadata)."""
  return isinstance(node, dict) and {"driver", "kvstore", "metadata"} <= set(node)


def flatten(tree: Any, prefix: Path = ()) -> dict[Path, Any]:
  """{path: leaf} of nested dicts; tensorstore specs are leaves, empty dicts dropped."""
  if not isinstance(tree, dict) or is_spec(tree):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(flatten(value, prefix + (str(key),)))
  return out


def unflatten(leaves: Mapping[Path, Any]) -> dict:
  out: dict = {}
  for path, value in leaves.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return out


def join(path: Path) -> str:
  return "/".join(path)


def _get(tree: Any, path: Path) -> Any:
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def find_params(checkpoint: T5XCheckpoint) -> tuple[Path, dict]:
  """(location, parameter tree): the first non-empty of optimizer/target, target, then
  optimizer/state/param_states, state/param_states."""
  for location in TARGET_LOCATIONS + PARAM_STATE_LOCATIONS:
    node = _get(checkpoint.contents, location)
    if isinstance(node, dict) and not is_spec(node) and flatten(node):
      return location, node
  tried = ", ".join(join(loc) for loc in TARGET_LOCATIONS + PARAM_STATE_LOCATIONS)
  raise T5XCheckpointError(
      f"{checkpoint.file} is not a T5X checkpoint: no parameter tree (tried {tried}, all absent "
      f"or empty; top-level keys {sorted(map(str, checkpoint.contents))})")


# -- one array ----------------------------------------------------------------------------------
def leaf_shape(leaf: Any) -> tuple[int, ...]:
  """Shape of an inline array or of the array a tensorstore spec names (no data read)."""
  if is_spec(leaf):
    return tuple(int(n) for n in leaf["metadata"].get("shape", ()))
  return tuple(np.shape(leaf))


def leaf_dtype(leaf: Any) -> str:
  """dtype name ("bfloat16", "float32", ...) of an inline array or a tensorstore spec."""
  if is_spec(leaf):
    name = leaf.get("dtype") or leaf["metadata"].get("dtype")
    if not name:
      return "unknown"
    try:
      return np.dtype(_zarr_dtype(name)).name
    except TypeError:  # Not a numpy dtype: named as stored.
      return str(name)
  return np.asarray(leaf).dtype.name


def _zarr_dtype(name: str):
  if name in ("bfloat16", "<V2", "|V2"):
    import ml_dtypes  # Installed with jax.
    return ml_dtypes.bfloat16
  return np.dtype(name)


def array_directory(checkpoint: T5XCheckpoint, spec: Mapping) -> str:
  """Local directory of a spec's zarr array: its kvstore path resolved against the checkpoint."""
  kvstore = spec["kvstore"]
  if not isinstance(kvstore, dict) or kvstore.get("driver") not in LOCAL_DRIVERS:
    driver = kvstore.get("driver") if isinstance(kvstore, dict) else kvstore
    raise T5XCheckpointError(f"{checkpoint.file}: kvstore driver {driver!r} is not supported "
                             f"(expected one of {list(LOCAL_DRIVERS)})")
  relative = kvstore.get("path") or spec.get("path")  # spec["path"]: tensorstore < 0.1.14.
  if not relative:
    raise T5XCheckpointError(f"{checkpoint.file}: a tensorstore spec has no kvstore.path")
  return os.path.join(checkpoint.directory, relative).rstrip("/")


def local_spec(checkpoint: T5XCheckpoint, spec: Mapping) -> dict:
  """The spec with a local "file" kvstore; keeps chunks and compressor only without .zarray."""
  directory = array_directory(checkpoint, spec)
  out = copy.deepcopy(dict(spec))
  out.pop("path", None)
  out["kvstore"] = {"driver": "file", "path": directory + "/"}
  if os.path.isfile(os.path.join(directory, ".zarray")):
    # The stored metadata is authoritative (as in T5X): keep only shape and dtype to check.
    out["metadata"] = {k: v for k, v in out["metadata"].items() if k in ("shape", "dtype")}
  return out


def chunk_keys(metadata: Mapping) -> Iterator[str]:
  """Keys of every chunk of a zarr v2 array ("0.0", "0.1", ...; "0" for a scalar)."""
  shape, chunks = metadata["shape"], metadata["chunks"]
  separator = metadata.get("dimension_separator") or "."
  if not shape:
    yield "0"
    return
  grid = [math.ceil(n / c) if c else 0 for n, c in zip(shape, chunks)]
  for index in itertools.product(*(range(n) for n in grid)):
    yield separator.join(map(str, index))


def read_spec(checkpoint: T5XCheckpoint, name: str, spec: Mapping) -> np.ndarray:
  """Reads the array of one tensorstore spec (read-only; every chunk file must exist)."""
  import tensorstore as ts

  directory = array_directory(checkpoint, spec)
  if not os.path.isdir(directory):
    raise T5XCheckpointError(f"{name}: array directory {directory} is missing (named by the "
                             f"tensorstore spec in {checkpoint.file})")
  spec = local_spec(checkpoint, spec)
  has_zarray = os.path.isfile(os.path.join(directory, ".zarray"))
  try:
    store = ts.open(spec, read=True, open=True, assume_metadata=not has_zarray).result()
  except ValueError as e:
    raise T5XCheckpointError(f"{name}: cannot open {directory}: {_first_line(e)}") from None
  metadata = store.spec().to_json()["metadata"]
  if metadata.get("fill_value") is None:  # Else an absent chunk legitimately reads as fill.
    for key in chunk_keys(metadata):
      if not os.path.isfile(os.path.join(directory, key)):
        raise T5XCheckpointError(f"{name}: chunk file {os.path.join(directory, key)} is missing")
  try:
    return np.asarray(store.read().result())
  except ValueError as e:
    raise T5XCheckpointError(f"{name}: cannot read {directory}: {_first_line(e)}") from None


def read_leaf(checkpoint: T5XCheckpoint, name: str, leaf: Any) -> np.ndarray:
  """An inline array as numpy, or the array a tensorstore spec names, in its stored dtype."""
  if is_spec(leaf):
    return read_spec(checkpoint, name, leaf)
  return np.asarray(leaf)


def _stored_in(checkpoint: T5XCheckpoint, leaf: Any) -> str:
  """" (in DIR)" for a tensorstore array, "" for an array inline in the msgpack file."""
  return f" (in {array_directory(checkpoint, leaf)})" if is_spec(leaf) else ""


def read_arrays(path: str) -> dict:
  """Every leaf of a T5X checkpoint (parameters and optimizer state) as numpy, stored dtypes."""
  checkpoint = open_checkpoint(path)
  return unflatten({p: read_leaf(checkpoint, join(p), leaf)
                    for p, leaf in flatten(checkpoint.contents).items()})


# -- config -------------------------------------------------------------------------------------
def _layer_count(shapes: Mapping[Path, tuple], stack: str) -> int:
  n = 0
  while any(p[:2] == (stack, f"layers_{n}") for p in shapes):
    n += 1
  return n


def infer_config(shapes: Mapping[Path, tuple[int, ...]], *, where: str = "the checkpoint",
                 dropout_rate: float | None = None) -> T5Config:
  """T5Config from parameter shapes `{path: shape}`.

  vocab, emb: token_embedder/embedding `[vocab, emb]`; heads, buckets: encoder/relpos_bias/
  rel_embedding `[heads, buckets]`; head_dim: encoder/layers_0/attention/query/kernel
  `[emb, heads * head_dim]`; mlp_dim and variant: mlp/wi_0/kernel `[emb, mlp]` (gated GELU,
  T5.1.1 / mT5 / ByT5) or mlp/wi/kernel (ReLU, original T5); layers: the layers_<i> present;
  tied logits: no decoder/logits_dense. Not stored in a checkpoint, so T5Config's defaults:
  relpos_max_distance 128 (every public T5X model), layer_norm_epsilon 1e-6, dropout_rate.
  """
  def shape(*path: str) -> tuple[int, int]:
    if path not in shapes:
      raise T5XCheckpointError(f"cannot infer the model config: {join(path)} is missing from "
                               f"{where} (give the model config, e.g. --gin_file MODEL.gin)")
    value = shapes[path]
    if len(value) != 2:
      raise T5XCheckpointError(f"cannot infer the model config: {join(path)} in {where} has "
                               f"shape {value}, expected 2 dimensions")
    return value

  vocab, emb = shape("token_embedder", "embedding")
  heads, buckets = shape("encoder", "relpos_bias", "rel_embedding")
  _, inner = shape("encoder", "layers_0", "attention", "query", "kernel")
  if inner % heads:
    raise T5XCheckpointError(
        f"cannot infer the model config: encoder/layers_0/attention/query/kernel in {where} is "
        f"{inner} wide, not a multiple of the {heads} heads of encoder/relpos_bias/rel_embedding")
  gated = ("encoder", "layers_0", "mlp", "wi_0", "kernel") in shapes
  _, mlp = shape("encoder", "layers_0", "mlp", "wi_0" if gated else "wi", "kernel")
  fields = dict(vocab_size=vocab, emb_dim=emb, num_heads=heads, head_dim=inner // heads,
                mlp_dim=mlp, num_encoder_layers=_layer_count(shapes, "encoder"),
                num_decoder_layers=_layer_count(shapes, "decoder"),
                mlp_activations=("gelu", "linear") if gated else ("relu",),
                logits_via_embedding=("decoder", "logits_dense", "kernel") not in shapes,
                relpos_buckets=buckets)
  if fields["num_decoder_layers"] == 0:
    raise T5XCheckpointError(f"cannot infer the model config: {where} has no decoder/layers_0")
  if dropout_rate is not None:
    fields["dropout_rate"] = dropout_rate
  return T5Config(**fields)


# -- checks -------------------------------------------------------------------------------------
def expected_shapes(config: T5Config) -> dict[Path, tuple[int, ...]]:
  """{path: shape} of flix's T5 (no adapters) for `config`, traced without initialising."""
  return {p: tuple(v.shape) for p, v in flatten(abstract_params(T5(config))).items()}


def _named(paths: list[str]) -> str:
  more = f" (and {len(paths) - _MAX_NAMED} more)" if len(paths) > _MAX_NAMED else ""
  return ", ".join(paths[:_MAX_NAMED]) + more


def check_params(checkpoint: T5XCheckpoint, location: Path, leaves: Mapping[Path, Any],
                 config: T5Config, config_source: str) -> None:
  """Raises naming the parameters whose shape or dtype differs from flix's T5 for `config`, the
  missing ones (and where they were expected) and the arrays flix has no place for (up to 5 of
  each, with a count of the rest), all on one line. Reads no array data."""
  expected = expected_shapes(config)
  problems = []
  mismatched = [f"{join(p)} has shape {leaf_shape(leaves[p])}{_stored_in(checkpoint, leaves[p])}"
                f" but {config_source} expects {shape}"
                for p, shape in expected.items() if p in leaves and leaf_shape(leaves[p]) != shape]
  if mismatched:
    problems.append(_named(mismatched))
  missing = [f"{join(p)} {shape}" for p, shape in expected.items() if p not in leaves]
  if missing:
    problems.append(f"missing {_named(missing)}: expected in {checkpoint.file} under "
                    f"{join(location)}")
  extra = [join(p) for p in leaves if p not in expected]
  if extra:
    problems.append(f"arrays flix's T5 has no place for: {_named(extra)}")
  dtypes = {p: leaf_dtype(leaf) for p, leaf in leaves.items() if p in expected}
  wrong_dtype = [f"{join(p)} ({dtype})" for p, dtype in dtypes.items() if dtype not in FLOAT_DTYPES]
  if wrong_dtype:
    problems.append(f"not floating-point (expected one of {list(FLOAT_DTYPES)}): "
                    f"{_named(wrong_dtype)}")
  if "uint16" in dtypes.values():
    problems.append("uint16 is how T5X version-2 checkpoints stored bfloat16, which T5X itself "
                    "no longer reads: re-save the checkpoint with a current T5X")
  if problems:
    raise T5XCheckpointError(f"T5X checkpoint {checkpoint.file} does not fit {config_source}: "
                             + "; ".join(problems) + f" ({config})")


# -- the whole model ----------------------------------------------------------------------------
def load_t5x(path: str | T5XCheckpoint, model_config: T5Config | None = None, *,
             dropout_rate: float | None = None) -> tuple[T5Config, dict]:
  """(T5Config, plain float32 numpy params) of a T5X checkpoint (directory or msgpack file).

  Without `model_config` the config is inferred from the shapes (`infer_config`); with it, every
  array's shape is checked against flix's T5 for that config before any array data is read.
  Either way a missing parameter, a shape mismatch or an array flix has no place for raises
  `T5XCheckpointError` naming it. bfloat16 / float16 / float64 arrays become float32.
  `dropout_rate` overrides the config's.
  """
  checkpoint = path if isinstance(path, T5XCheckpoint) else open_checkpoint(path)
  location, tree = find_params(checkpoint)
  leaves = flatten(tree)
  if model_config is None:
    where = f"{checkpoint.file} (parameters under {join(location)})"
    config = infer_config({p: leaf_shape(v) for p, v in leaves.items()}, where=where,
                          dropout_rate=dropout_rate)
    source = "the config inferred from its shapes"
  else:
    config = model_config if dropout_rate is None else dataclasses.replace(
        model_config, dropout_rate=dropout_rate)
    source = "the model config"
  check_params(checkpoint, location, leaves, config, source)
  params = {p: np.array(read_leaf(checkpoint, join(p), leaf), np.float32)
            for p, leaf in leaves.items()}
  return config, unflatten(params)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


__all__ = ["T5XCheckpointError", "T5XCheckpoint", "open_checkpoint", "locate", "find_params",
           "read_arrays", "read_leaf", "read_spec", "infer_config", "check_params",
           "expected_shapes", "load_t5x", "flatten", "unflatten", "is_spec"]
