"""One feature combination of a FLix model as Hugging Face weights: merged, or a PEFT adapter.

For combination c (one id per feature type, INACTIVE for none) a projection's update is
dW_c = sum_t s_t A_t[c_t]^T B_t[c_t] (+ the shared adapter) `[d_in, d_out]`. `merge_params`
folds it into the base kernels (then `hf.save_hf`); `peft_adapter` writes it as one PEFT LoRA
adapter of rank R = the active features' ranks + the shared rank, with r = lora_alpha = R
(PEFT scale 1) and each feature's scale folded into its rows of lora_B. PEFT module names are
each architecture's (`hf.projection_map`: q, k, v, o, wi_0, wi_1, wo for T5; q_proj, k_proj,
v_proj, o_proj, gate_proj, up_proj, down_proj for the decoder-only models).

    ids = flix_config.space.encode(parse_features("task=ordinal,lang=fr"), partial=True)
    hf.save_hf("out/hf_fr", peft_export.merge_params(params, flix_config, ids), config)
    peft_export.save_peft("out/peft_fr", params, config, flix_config, ids)
"""

from __future__ import annotations

import flax.linen as nn
import numpy as np

from flix import merge as flix_merge
from flix.config import FlixConfig
from flix.errors import HFConversionError
from flix.features import INACTIVE
from flix.interop import hf
from flix.interop.hf_files import write_hf_dir
from flix.interop.hf_state import get_path_or_none
from flix.layers import a_name, b_name
from flix.models.families import ModelConfig

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


def _check_full_tables(params, flix: FlixConfig) -> None:
  params = nn.unbox(params)
  for t in flix.space.types:
    for leaf in _find_leaves(params, a_name(t.name)):
      if leaf.shape[0] != t.size:
        raise HFConversionError(
            f"adapter table {a_name(t.name)} holds {leaf.shape[0]} rows but feature type "
            f"{t.name!r} has {t.size} values (compact row_limit tables cannot be exported)")


def _find_leaves(tree, name):
  if isinstance(tree, dict):
    for k, v in tree.items():
      if k == name and not isinstance(v, dict):
        yield v
      else:
        yield from _find_leaves(v, name)


def _to_numpy(tree):
  if isinstance(tree, dict):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)


def merge_params(params, flix: FlixConfig, ids) -> dict:
  """Base params with combination `ids` merged exactly (`flix.merge.merge_params`), as numpy."""
  _check_full_tables(params, flix)
  merged = flix_merge.merge_params(params, flix, np.asarray(ids, np.int32))
  return _to_numpy(merged)


def combination_lora(layer_params, flix: FlixConfig,
                     ids) -> tuple[np.ndarray, np.ndarray] | None:
  """One projection's combination as one LoRA pair (A `[R, d_in]`, B `[R, d_out]`), A^T B = dW_c.

  The A's and B's of the active features (and the shared adapter) are concatenated along the
  rank axis, each feature's scale s_t folded into its rows of B. R is the same for every
  projection (a feature missing from a layer gets zero columns). None if R == 0.
  """
  kernel = np.asarray(layer_params["kernel"])
  d_in, d_out = kernel.shape
  a_parts, b_parts = [], []
  pairs = []
  if flix.shared_rank:
    pairs.append(("shared", flix.shared_rank, None))
  for t, r, i in zip(flix.space.types, flix.ranks, np.asarray(ids)):
    if i != INACTIVE:
      pairs.append((t.name, r, int(i)))
  for name, rank, row in pairs:
    a_key, b_key = a_name(name), b_name(name)
    if a_key in layer_params:
      a, b = np.asarray(layer_params[a_key]), np.asarray(layer_params[b_key])
      if row is not None:
        a, b = a[row], b[row]
      a_parts.append(a.astype(np.float32))
      b_parts.append((b * np.float32(flix.scale(rank))).astype(np.float32))
    else:
      a_parts.append(np.zeros((rank, d_in), np.float32))
      b_parts.append(np.zeros((rank, d_out), np.float32))
  if not a_parts:
    return None
  return np.concatenate(a_parts, 0), np.concatenate(b_parts, 0)


def combination_rank(flix: FlixConfig, ids) -> int:
  """Rank of one combination's update: active features' ranks plus the shared rank."""
  return flix.shared_rank + sum(r for r, i in zip(flix.ranks, np.asarray(ids)) if i != INACTIVE)


def peft_adapter(params, config: ModelConfig, flix: FlixConfig, ids, *,
                 base_model_name_or_path: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
  """(adapter_config.json dict, adapter_model.safetensors tensors) of combination `ids`.

  PEFT LoRA with r = lora_alpha = R (the combination rank), so PEFT's scale is 1 and each
  feature's scale lives in its rows of lora_B: the PEFT model computes x W^T + x A^T B^T with
  B A = dW_c^T, exactly the flix model with features `ids`. Tensors: lora_A `(R, in)`, lora_B
  `(out, R)` per adapted projection.
  """
  params = nn.unbox(params)
  _check_full_tables(params, flix)
  ids = np.asarray(ids, np.int32)
  flix.space.check_ids(ids[None])
  rank = combination_rank(flix, ids)
  if rank == 0:
    raise HFConversionError("the combination has no active feature and the model no shared "
                            "adapter: there is nothing to export (use to-hf for the base)")
  tensors, modules = {}, []
  projections = hf.projection_map(config)
  for path, hf_module, _ in projections:
    layer = get_path_or_none(params, path)
    if not flix_merge.is_adapted(layer):
      continue
    a, b = combination_lora(layer, flix, ids)  # Not None: rank > 0.
    prefix = f"base_model.model.{hf_module}"
    tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a)  # (R, in)
    tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b.T)  # (out, R)
    modules.append(hf_module)
  if not modules:
    raise HFConversionError("the checkpoint has no adapted projection to export")
  adapter_config = {
      "peft_type": "LORA",
      "task_type": hf.family_module(config).PEFT_TASK_TYPE,
      "base_model_name_or_path": base_model_name_or_path,
      "r": rank,
      "lora_alpha": rank,
      "use_rslora": False,
      "target_modules": _target_modules([m for _, m, _ in projections], modules),
      "lora_dropout": 0.0,
      "bias": "none",
      "fan_in_fan_out": False,
      "modules_to_save": None,
      "init_lora_weights": True,
      "use_dora": False,
      "inference_mode": True,
  }
  return adapter_config, tensors


def _target_modules(all_modules: list[str], modules: list[str]) -> list[str]:
  """Short module names (q, q_proj, ...) if they pick exactly `modules`, else the full paths."""
  short = sorted({m.rsplit(".", 1)[1] for m in modules})
  if {m for m in all_modules if m.rsplit(".", 1)[1] in short} == set(modules):
    return short
  return sorted(modules)


def save_peft(out_dir: str, params, config: ModelConfig, flix: FlixConfig, ids, *,
              base_model_name_or_path: str | None = None, overwrite: bool = False) -> str:
  """Writes a PEFT LoRA adapter directory for combination `ids` (see `peft_adapter`)."""
  adapter_config, tensors = peft_adapter(params, config, flix, ids,
                                         base_model_name_or_path=base_model_name_or_path)
  return write_hf_dir(out_dir, {PEFT_CONFIG: adapter_config}, PEFT_WEIGHTS, tensors,
                      overwrite=overwrite)
