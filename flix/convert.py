"""Command line conversions between flix checkpoints and Hugging Face / T5X formats (no network).

    python -m flix.convert from-hf --hf_dir DIR --out CKPT [--dropout_rate R] [--overwrite]
        A local transformers directory (config.json + model.safetensors or pytorch_model.bin)
        -> a flix checkpoint without adapters (flix.checkpoints format), usable as a base /
        initial checkpoint. The architecture comes from config.json's `architectures`:
        T5ForConditionalGeneration / MT5ForConditionalGeneration (T5.1.1 / mT5 / ByT5 with
        gated GELU and an untied head, or the original T5 with ReLU and tied embeddings) ->
        T5Config; LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GemmaForCausalLM ->
        DecoderConfig. CKPT/model.gin holds `<Config>.<field> = <value>` bindings for the model.

    python -m flix.convert from-t5x --t5x_dir DIR --out CKPT [--gin_file MODEL.gin ...]
                                    [--dropout_rate R] [--overwrite]
        A T5X checkpoint (a checkpoint_<step> directory: msgpack `checkpoint` + tensorstore
        arrays, or an older single msgpack file) -> a flix checkpoint without adapters, plus
        CKPT/model.gin. The T5Config is inferred from the array shapes, or, with --gin_file,
        is the gin files' MODEL_CONFIG (e.g. models/mt5_base.gin) and every array's
        shape is checked against it. Optimizer state is not read.

    python -m flix.convert to-hf --checkpoint CKPT [--features task=X,lang=Y] --out DIR
        The base model, or the base with one feature combination merged exactly, as a
        transformers directory (config.json + model.safetensors) for
        T5ForConditionalGeneration / AutoModelForCausalLM.from_pretrained (a DecoderConfig
        maps to Gemma, Qwen2, Mistral or Llama: flix.interop.hf_decoder).

    python -m flix.convert export-peft --checkpoint CKPT --features task=X,lang=Y --out DIR
        One feature combination as a PEFT LoRA adapter (adapter_config.json +
        adapter_model.safetensors) on top of the `to-hf` base: rank = the active features'
        ranks + the shared rank, r = lora_alpha (PEFT scale 1), per-feature scales folded
        into lora_B. target_modules are the architecture's (q, k, v, o, wi_0, wi_1, wo for T5;
        q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj for decoder-only LMs).

    python -m flix.convert verify --hf_dir DIR [--checkpoint CKPT] [--json OUT]
        Runs the transformers model of DIR and the flix model (DIR converted in memory, or
        CKPT's base) in float32 on one seeded random batch and prints one JSON line
        {"architecture": ..., "max_abs_logit_diff": ..., "greedy_equal": ...} (also written to
        OUT); exit status 1 when the difference exceeds 1e-4 or the greedy tokens differ
        (flix.interop.hf_verify). Needs torch and transformers.

--features names one value per feature type ("task=ordinal,lang=fr"); a type left out is
inactive (e.g. a zero-shot unseen language). Errors (a missing or malformed input, a shape
that does not fit, an existing --out without --overwrite) exit with status 1 and one line on
stderr; nothing is written to --out. Command-line syntax errors exit with status 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from flix import files
from flix.checkpoints import load_model, save_model, strip_adapters
from flix.errors import CheckpointError, HFConversionError, UnknownFeatureError
from flix.features import parse_features
from flix.interop import hf, hf_verify, peft_export
from flix.models.families import gin_bindings
from flix.models.t5 import T5Config

MODEL_GIN = "model.gin"


def from_hf(hf_dir: str, out: str, *, dropout_rate: float | None = None,
            overwrite: bool = False) -> str:
  """Converts a local transformers T5 directory to a flix checkpoint; returns its path."""
  if not os.path.isdir(hf_dir):
    raise HFConversionError(f"--hf_dir {hf_dir} is not a directory")
  config, params = hf.load_hf(hf_dir, dropout_rate=dropout_rate)
  return save_model(out, params, config, overwrite=overwrite,
                    extra_files={MODEL_GIN: gin_bindings(config, os.path.abspath(hf_dir))})


def gin_model_config(gin_files: Sequence[str]) -> T5Config:
  """The T5Config that `MODEL_CONFIG` names in `gin_files`, parsed as the entry points do (gin's
  global config is cleared before and after)."""
  import gin

  from flix import gin_utils

  gin.clear_config()
  try:
    try:
      gin_utils.parse_gin(list(gin_files), [], [])
    except (OSError, ValueError) as e:
      raise ValueError(f"--gin_file {' '.join(gin_files)}: {_one_line(e)}") from None
    try:
      value = gin.query_parameter("%MODEL_CONFIG")
    except ValueError:
      raise ValueError(f"--gin_file {' '.join(gin_files)} does not define MODEL_CONFIG (expected a "
                       "model gin such as models/mt5_base.gin or a converted "
                       f"checkpoint's {MODEL_GIN})") from None
    if isinstance(value, gin.config.ConfigurableReference):
      value = value.scoped_configurable_fn()
    if not isinstance(value, T5Config):
      raise ValueError(f"--gin_file {' '.join(gin_files)}: MODEL_CONFIG is {value!r}, expected "
                       "@T5Config()")
    return value
  finally:
    gin.clear_config()


def from_t5x(t5x_dir: str, out: str, *, gin_files: Sequence[str] = (),
             dropout_rate: float | None = None, overwrite: bool = False) -> tuple[str, str]:
  """Converts a T5X checkpoint to a flix checkpoint; returns (its path, what was read)."""
  from flix.interop import t5x

  if not os.path.exists(t5x_dir):
    raise t5x.T5XCheckpointError(f"--t5x_dir {t5x_dir}: no such file or directory (expected a "
                                 "T5X checkpoint_<step> directory or a msgpack checkpoint file)")
  if os.path.exists(out) and not overwrite:  # Before reading gigabytes.
    raise FileExistsError(f"{os.path.abspath(out)} already exists; refusing to overwrite it")
  model_config = gin_model_config(gin_files) if gin_files else None
  checkpoint = t5x.open_checkpoint(t5x_dir)
  description = checkpoint.describe()
  config, params = t5x.load_t5x(checkpoint, model_config, dropout_rate=dropout_rate)
  source = f"T5X checkpoint {os.path.abspath(t5x_dir)}"
  path = save_model(out, params, config, overwrite=overwrite,
                    extra_files={MODEL_GIN: gin_bindings(config, source)})
  return path, description


def _one_line(error: BaseException) -> str:
  """The error's message on one line (some messages span several lines)."""
  return " ".join(line.strip() for line in str(error).strip().splitlines()) or type(error).__name__


def _combination(flix, features: str | None):
  if features is None:
    return None
  if flix is None:
    raise HFConversionError("--features given, but the checkpoint has no adapters "
                               "(no flix.json)")
  return flix.space.encode(parse_features(features), partial=True)


def to_hf(checkpoint: str, out: str, *, features: str | None = None,
          overwrite: bool = False) -> str:
  """Writes the checkpoint's base (or base + merged `features`) as a transformers directory."""
  config, flix, params = load_model(checkpoint)
  ids = _combination(flix, features)
  if ids is None:
    params = strip_adapters(params)
  else:
    params = peft_export.merge_params(params, flix, ids)
  return hf.save_hf(out, params, config, overwrite=overwrite)


def export_peft(checkpoint: str, features: str, out: str, *,
                base_model_name_or_path: str | None = None, overwrite: bool = False) -> str:
  """Writes combination `features` of the checkpoint as a PEFT LoRA adapter directory."""
  config, flix, params = load_model(checkpoint)
  ids = _combination(flix, features)
  if ids is None:
    raise HFConversionError("export-peft needs --features")
  return peft_export.save_peft(out, params, config, flix, ids,
                               base_model_name_or_path=base_model_name_or_path,
                               overwrite=overwrite)


def verify(hf_dir: str, checkpoint: str | None = None, json_out: str | None = None) -> dict:
  """`hf_verify.verify`'s report, also written to `json_out` when given."""
  if not os.path.isdir(hf_dir):
    raise HFConversionError(f"--hf_dir {hf_dir} is not a directory")
  try:
    report = hf_verify.verify(hf_dir, checkpoint)
  except ImportError as e:
    raise HFConversionError(f"verify runs the transformers model and needs torch and "
                            f"transformers ({e}); install the extras: pip install -e '.[hf]'"
                            ) from None
  if json_out:
    files.write_text(json_out, json.dumps(report) + "\n")
  return report


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m flix.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("from-hf", help="transformers T5 / Llama / Mistral / Qwen2 / Gemma "
                     "directory -> flix checkpoint")
  p.add_argument("--hf_dir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--dropout_rate", type=float, default=None,
                 help="the model's dropout_rate (default: T5's config.json dropout_rate; "
                      "0 for decoder-only LMs)")
  p.add_argument("--overwrite", action="store_true")

  p = sub.add_parser("from-t5x",
                     help="T5X checkpoint (directory or msgpack file) -> flix checkpoint")
  p.add_argument("--t5x_dir", required=True,
                 help="a T5X checkpoint_<step> directory, or an older single msgpack file")
  p.add_argument("--out", required=True)
  p.add_argument("--gin_file", action="append", default=[],
                 help="model gin defining MODEL_CONFIG (repeatable); shapes are checked against "
                      "it (default: the config is inferred from the shapes)")
  p.add_argument("--dropout_rate", type=float, default=None,
                 help="T5Config.dropout_rate (default: the gin file's, else T5Config's 0.1)")
  p.add_argument("--overwrite", action="store_true")

  p = sub.add_parser("to-hf", help="flix checkpoint (+ merged features) -> transformers directory")
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--features", default=None, help='e.g. "task=ordinal,lang=fr"')
  p.add_argument("--out", required=True)
  p.add_argument("--overwrite", action="store_true")

  p = sub.add_parser("export-peft", help="one feature combination -> PEFT LoRA adapter")
  p.add_argument("--checkpoint", required=True)
  p.add_argument("--features", required=True, help='e.g. "task=ordinal,lang=fr"')
  p.add_argument("--out", required=True)
  p.add_argument("--base_model_name_or_path", default=None,
                 help="recorded in adapter_config.json (e.g. the to-hf output directory)")
  p.add_argument("--overwrite", action="store_true")

  p = sub.add_parser("verify", help="transformers vs flix logits and greedy tokens (JSON line)")
  p.add_argument("--hf_dir", required=True)
  p.add_argument("--checkpoint", default=None,
                 help="a flix checkpoint of the same model (default: convert --hf_dir in memory)")
  p.add_argument("--json", default=None, help="also write the JSON line to this file")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    if args.command == "from-hf":
      path = from_hf(args.hf_dir, args.out, dropout_rate=args.dropout_rate,
                     overwrite=args.overwrite)
      print(f"wrote flix checkpoint {path} (model gin: {os.path.join(path, MODEL_GIN)})")
    elif args.command == "from-t5x":
      path, description = from_t5x(args.t5x_dir, args.out, gin_files=args.gin_file,
                                   dropout_rate=args.dropout_rate, overwrite=args.overwrite)
      print(f"read {description}")
      print(f"wrote flix checkpoint {path} (model gin: {os.path.join(path, MODEL_GIN)})")
    elif args.command == "to-hf":
      path = to_hf(args.checkpoint, args.out, features=args.features, overwrite=args.overwrite)
      print(f"wrote transformers model {path}")
    elif args.command == "verify":
      report = verify(args.hf_dir, args.checkpoint, args.json)
      print(json.dumps(report))
      if not hf_verify.passed(report):
        print(f"flix.convert verify: error: {report['architecture']}: max |logit difference| "
              f"{report['max_abs_logit_diff']:.3g} (limit {hf_verify.TOLERANCE:g}), greedy tokens "
              f"{'equal' if report['greedy_equal'] else 'differ'}", file=sys.stderr)
        return 1
    else:
      path = export_peft(args.checkpoint, args.features, args.out,
                         base_model_name_or_path=args.base_model_name_or_path,
                         overwrite=args.overwrite)
      print(f"wrote PEFT adapter {path}")
  except FileExistsError as e:
    print(f"flix.convert {args.command}: error: {e} (command line: --overwrite)", file=sys.stderr)
    return 1
  except (HFConversionError, UnknownFeatureError, CheckpointError, ValueError) as e:
    print(f"flix.convert {args.command}: error: {_one_line(e)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
