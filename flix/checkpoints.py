"""Model checkpoints: orbax arrays plus the JSON that says what they are.

A checkpoint is a directory:

    model.json      the model config and its family (`flix.models.families`: {"family": "t5" |
                    "decoder", ...fields}; without "family", a T5Config)
    flix.json       FlixConfig (only when the model has adapters; holds the feature space)
    features.json   the FeatureSpace alone, for tools that need only the ids
    params/         orbax PyTree checkpoint of the (plain, unboxed) parameters
    base.json       adapter-only checkpoints: {"base_checkpoint": ABSOLUTE_PATH}; params/ then
                    holds only adapter leaves and the base is read from that path
    ...             the trainer adds config.gin and train_state/ (see flix.training.checkpointer)

Writes are atomic: everything goes to a temporary sibling directory that is renamed into
place when complete, so a crash never leaves a directory that `load_model` would pick up
half-written, and an existing checkpoint is never overwritten unless asked.

Multi-process (jax.distributed): every process calls `save_model` with the same path; all of
them write their shards of the arrays (orbax), process 0 alone writes the JSON files and renames
the directory into place, and barriers keep the processes in step (see `atomic_directory`).
Every process reads the checkpoint on restore.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from flix.config import FlixConfig
from flix.errors import CheckpointError, DamagedCheckpointError
from flix.layers import is_adapter_name
from flix.models.families import ModelConfig, config_from_json, config_to_json

MODEL_JSON = "model.json"
FLIX_JSON = "flix.json"
FEATURES_JSON = "features.json"
BASE_JSON = "base.json"
PARAMS = "params"


def is_primary() -> bool:
  """Whether this process writes what all processes share (files, renames): process 0."""
  return jax.process_index() == 0


def sync_processes(name: str) -> None:
  """A barrier across all processes (a no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def atomic_directory(path: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a temporary directory that becomes `path` only if the block completes.

  One process: a fresh, randomly named sibling (`.NAME.tmp-XXXX`); removed if the block fails.
  Several processes: all of them get the same sibling `.NAME.tmp-shared` (orbax needs one path
  for the shards of every process). Process 0 creates it (removing a crashed save's leftovers),
  then, once every process has finished the block, renames it into place; barriers before the
  block, before the rename and after it, so no process returns (or reads) a half-written
  directory. Inside the block, only process 0 should write single files (`is_primary`). If the
  block fails in one process, the others wait at the barrier until jax.distributed ends the
  job; the temporary directory is never taken for a checkpoint (a later save to `path`
  replaces it).
  """
  path = os.path.abspath(path)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} already exists; refusing to overwrite it (pass overwrite=True)")
  parent, name = os.path.dirname(path), os.path.basename(path)
  if jax.process_count() == 1:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
      yield tmp
      _replace(tmp, path)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    return
  tmp = os.path.join(parent, f".{name}.tmp-shared")
  if is_primary():
    os.makedirs(parent, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
  sync_processes(f"flix atomic_directory {path}: created")
  yield tmp
  sync_processes(f"flix atomic_directory {path}: written")
  if is_primary():
    _replace(tmp, path)
  sync_processes(f"flix atomic_directory {path}: renamed")


def _replace(tmp: str, path: str) -> None:
  """Renames `tmp` to `path`, replacing an existing `path` (moved aside first)."""
  if os.path.exists(path):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
    os.rename(path, os.path.join(old, "x"))
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, path)


def _save_handlers() -> ocp.type_handlers.TypeHandlerRegistry:
  """Orbax's default type handlers, except that a replicated jax.Array is written once, from
  replica 0, as one chunk (orbax's default splits it across its replicas: on 8 devices, 8 chunk
  files per array and ~4x the save time of a small model; the stored array is the same).
  The per-host array metadata store is orbax's default one (not exported; orbax is pinned)."""
  from orbax.checkpoint._src.metadata import array_metadata_store  # pylint: disable=g-import-not-at-top
  th = ocp.type_handlers
  return th.create_type_handler_registry(
      (int, th.ScalarHandler()), (float, th.ScalarHandler()), (bytes, th.ScalarHandler()),
      (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()),
      (jax.Array, th.ArrayHandler(array_metadata_store=array_metadata_store.Store(),
                                  use_replica_parallel=False)),
      (str, th.StringHandler()))


def save_pytree(path: str, tree: Any) -> None:
  """Writes a pytree of arrays with orbax (blocking), one compressed array store per leaf.

  (OCDBT's single store can keep a process-local copy of the data next to the merged one,
  doubling the size of small checkpoints.) Multi-process: every process calls it with the same
  path and writes its shards; orbax's own temporary directory and barriers make it atomic.
  Readable by orbax's StandardCheckpointer (the same format as its StandardSave).
  """
  handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False, type_handler_registry=_save_handlers())
  ocp.Checkpointer(handler).save(os.path.abspath(path), args=ocp.args.PyTreeSave(tree))


def restore_pytree(path: str, target: Any = None) -> Any:
  """Reads a pytree; `target` (arrays or jax.ShapeDtypeStruct with shardings) fixes layout.

  Without `target`, numpy arrays: readable whatever devices and processes saved them (orbax
  refuses to lay arrays out as saved on another topology, e.g. by a multi-process run).
  """
  if not os.path.isdir(path):
    raise CheckpointError(f"no orbax checkpoint at {path}")
  checkpointer = ocp.StandardCheckpointer()
  path = os.path.abspath(path)
  try:
    if target is None:
      metadata = checkpointer.metadata(path).item_metadata.tree
      target = jax.tree.map(lambda m: np.empty(m.shape, m.dtype), metadata)
    return checkpointer.restore(path, target)
  except Exception as e:  # pylint: disable=broad-except
    damaged = damaged_arrays(path) or _named_in(path, str(e))
    if not damaged:
      raise
    checkpoint = os.path.dirname(path)
    where = os.path.basename(path)
    raise DamagedCheckpointError(checkpoint, {f"{where}/{k}": v for k, v in damaged.items()}
                                 ) from None


def damaged_arrays(path: str) -> dict[str, str]:
  """{array name (`encoder/w`): why it cannot be read} for the orbax checkpoint at `path`.

  Reads every array store its metadata lists (`path/<a.b.c>/`, zarr) on its own with
  TensorStore, missing chunks included; empty when everything reads.
  """
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  try:
    with open(os.path.join(path, "_METADATA"), encoding="utf-8") as f:
      tree = json.load(f)["tree_metadata"]
    names = [".".join(str(k["key"]) for k in leaf["key_metadata"]) for leaf in tree.values()
             if leaf.get("value_metadata", {}).get("value_type") in ("jax.Array", "np.ndarray")]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return {"_METADATA": f"orbax metadata unreadable ({type(e).__name__}: {_first_line(e)})"}
  damaged = {}
  for name in names:
    store = os.path.join(path, name)
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": store},
            "fill_missing_data_reads": False}
    try:
      ts.open(spec, read=True).result().read().result()
    except Exception as e:  # pylint: disable=broad-except
      damaged[name.replace(".", "/")] = _first_line(e)
  return damaged


def _named_in(path: str, message: str) -> dict[str, str]:
  """{array: message} for an array directory of `path` that an error message names."""
  found = re.search(re.escape(path) + r"/([^/\"' ]+)", message)
  if not found or found.group(1).startswith("_"):
    return {}
  return {found.group(1).replace(".", "/"): _first_line(message)}


def _first_line(error) -> str:
  text = str(error).strip().splitlines()
  line = text[0].split(" [tensorstore_spec=")[0] if text else type(error).__name__
  return line[:300]


def adapter_leaves(params) -> dict:
  """The adapter-only subtree of `params` (empty branches removed)."""
  def keep(node, path=()):
    if isinstance(node, dict):
      out = {k: keep(v, path + (k,)) for k, v in node.items()}
      return {k: v for k, v in out.items() if not (v is None or isinstance(v, dict) and not v)}
    return node if path and is_adapter_name(path[-1]) else None
  return keep(nn.unbox(params))


def graft(base, adapters) -> dict:
  """`base` with the leaves of `adapters` added or replaced (same nesting)."""
  if not isinstance(adapters, dict):
    return adapters
  out = dict(base)
  for k, v in adapters.items():
    out[k] = graft(base.get(k, {}), v) if isinstance(v, dict) else v
  return out


def save_model(path: str, params, model_config: ModelConfig, flix: FlixConfig | None = None, *,
               base_checkpoint: str | None = None, overwrite: bool = False,
               extra_files: dict[str, str] | None = None,
               extra_trees: dict[str, Any] | None = None,
               writers: Sequence[Callable[[str], None]] = ()) -> str:
  """Writes a checkpoint directory (atomically); returns its absolute path. Multi-process: all
  processes call it (see the module docstring).

  With `base_checkpoint`, only adapter leaves are written and the base is referenced by path.
  `extra_files` maps file names to text written next to the JSON (e.g. "config.gin");
  `extra_trees` maps directory names to pytrees written with orbax (e.g. "train_state");
  every process calls each of `writers` with the temporary directory (e.g. to write its data
  iterators' state) before it is renamed into place.
  """
  params = nn.unbox(params)
  if base_checkpoint is not None:
    if flix is None:
      raise ValueError("an adapter-only checkpoint needs the model's FlixConfig")
    base_checkpoint = os.path.abspath(base_checkpoint)
    if not os.path.isfile(os.path.join(base_checkpoint, MODEL_JSON)):
      raise CheckpointError(f"base checkpoint {base_checkpoint} has no {MODEL_JSON}")
    params = adapter_leaves(params)
  with atomic_directory(path, overwrite) as tmp:
    if is_primary():
      _write(tmp, MODEL_JSON, config_to_json(model_config))
      if flix is not None:
        _write(tmp, FLIX_JSON, flix.to_json())
        _write(tmp, FEATURES_JSON, flix.space.to_json())
      if base_checkpoint is not None:
        _write(tmp, BASE_JSON, json.dumps({"base_checkpoint": base_checkpoint}, indent=2))
      for name, text in (extra_files or {}).items():
        _write(tmp, name, text)
    save_pytree(os.path.join(tmp, PARAMS), params)
    for name, tree in (extra_trees or {}).items():
      save_pytree(os.path.join(tmp, name), tree)
    for write in writers:
      write(tmp)
  return os.path.abspath(path)


def load_configs(path: str) -> tuple[ModelConfig, FlixConfig | None]:
  """The model and adapter configs saved in checkpoint `path`."""
  model_json = os.path.join(path, MODEL_JSON)
  if not os.path.isfile(model_json):
    raise CheckpointError(f"{path} is not a flix checkpoint: {MODEL_JSON} is missing")
  try:
    model_config = config_from_json(_read(model_json), model_json)
  except ValueError as e:
    raise CheckpointError(str(e)) from None
  flix_json = os.path.join(path, FLIX_JSON)
  flix = FlixConfig.from_json(_read(flix_json)) if os.path.isfile(flix_json) else None
  return model_config, flix


def restore_params(path: str, target: Any = None) -> Any:
  """Params of checkpoint `path` laid out like `target` (plain tree of arrays or
  jax.ShapeDtypeStruct with shardings); an adapter-only checkpoint reads its base too."""
  base_json = os.path.join(path, BASE_JSON)
  if not os.path.isfile(base_json):
    return restore_pytree(os.path.join(path, PARAMS), target)
  base_path = json.loads(_read(base_json))["base_checkpoint"]
  adapters_target = None if target is None else adapter_leaves(target)
  base_target = None if target is None else strip_adapters(target)
  return graft(restore_params(base_path, base_target),
               restore_pytree(os.path.join(path, PARAMS), adapters_target))


def strip_adapters(params) -> dict:
  """`params` without adapter leaves."""
  if isinstance(params, dict):
    return {k: strip_adapters(v) for k, v in params.items() if not is_adapter_name(k)}
  return params


def load_model(path: str) -> tuple[ModelConfig, FlixConfig | None, dict]:
  """(model config, adapter config or None, plain params); follows base.json references."""
  model_config, flix = load_configs(path)
  params = restore_pytree(os.path.join(path, PARAMS))
  base_json = os.path.join(path, BASE_JSON)
  if os.path.isfile(base_json):
    base_path = json.loads(_read(base_json))["base_checkpoint"]
    base_config, _, base_params = load_model(base_path)
    if base_config != model_config:
      raise CheckpointError(f"adapter checkpoint {path} was trained on a {model_config} base, but "
                            f"its base_checkpoint {base_path} holds a {base_config}")
    params = graft(base_params, params)
  return model_config, flix, jax.tree.map(np.asarray, params)


def check_feature_space(path: str, saved, configured) -> None:
  """Names the feature values that the run uses but the checkpoint's feature space lacks."""
  saved_types = {t.name: t for t in saved.types}
  for t in configured.types:
    if t.name not in saved_types:
      raise CheckpointError(
          f"feature type {t.name!r} is not in the feature space saved with {path} "
          f"(types {list(saved_types)})")
    old = saved_types[t.name]
    if t.values != old.values:
      absent = [v for v in t.values if v not in old.values]
      raise CheckpointError(
          f"feature values {absent or list(t.values)} of type {t.name!r} differ from the feature "
          f"space saved with {path} ({list(old.values)}); ids would mean other features")


def _write(directory: str, name: str, text: str) -> None:
  with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
    f.write(text)


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()
