"""`python -m experiments.bench peft`: transformers + PEFT LoRA (torch, CPU) vs flix LoRA and FLix.

Needs the `hf` extra (torch, transformers, peft, safetensors): `pip install -e '.[hf]'`.

`--arch t5` (default) is described here; `--arch decoder` runs the same benches, checks and
report on a tiny LlamaForCausalLM with a prefix-LM batch (`experiments.bench.peft_decoder`, which also
states its model, batch and loss). An arch object (`T5Arch`, `peft_decoder.DecoderArch`) holds
what differs between the two.

One model and one batch for both frameworks: the tiny byte-level T5.1.1 of `experiments.bench.train`
(d_model 256, 4 + 4 layers, d_ff 1024, gated GELU, untied head, dropout 0.1; `--model small`
and the size flags as there) with random float32 weights, written by `flix.interop.hf.save_hf`
and read back by `T5ForConditionalGeneration.from_pretrained`; a batch of B = 32 examples x
(64 input + 32 target) random bytes, no padding. Adapters sit on every projection of every
block (PEFT target_modules q, k, v, o, wi_0, wi_1, wo = flix targets ("*",)).

`train`: one whole step = forward + backward + AdamW update (lr 1e-3, betas (0.9, 0.999),
eps 1e-8, no weight decay, gradients clipped to global norm 1), dropout on, base frozen:
  torch+peft/lora  PeftModel, r = lora_alpha = 16, lora_dropout 0; eager torch in train mode,
                   torch.optim.AdamW (`--torch-adamw`: for-loop, foreach or fused kernel);
  flix/lora        T5 with FlixConfig.lora(16): the trainer's jitted,
                   state-donating step (`flix.training.step`), optax AdamW;
  flix/flix        FLix: two types (task, lang) of F/2 values, rank 8 each, so an example's update
                   has rank 16 like LoRA's; the trainer's default (dense) step, ids drawn uniformly.
`infer`: teacher-forced logits `[B, 32, vocab]` of the batch (one encoder + decoder forward, no
KV cache) with n in `--adapters` (default 1, 4, 16) distinct adapters in the batch, example i
using adapter i mod n:
  torch+peft/base   the HF base model without adapters (a floor);
  torch+peft/lora   the PEFT LoRA model of `train`, one adapter for the whole batch (reference);
  torch+peft/mixed  one PeftModel holding max(n) LoRA adapters (`load_adapter`), adapter j the
                    PEFT export (`flix.interop.peft_export.save_peft`, r = 16) of FLix
                    combination j;
                    `model(..., adapter_names=[...])`, eval mode, `torch.inference_mode()`;
  flix/base         flix T5 without adapters (a floor);
  flix/lora         flix LoRA r = 16, one adapter for the whole batch (reference);
  flix/flix         the FLix model with feature ids `[B, 2]` holding the same n combinations.

Equivalence, asserted before any timing (AssertionError otherwise): PEFT LoRA and flix LoRA have
the same trainable parameters and give the same logits, the same mean token cross-entropy and
the same gradients of it w.r.t. every adapter matrix (dropout off); for every n, PEFT's mixed
batch gives the FLix batch's logits, and those differ from the base model's (the adapters
matter).

Timing: `torch.set_num_threads(--threads)` (default os.cpu_count(), the cores XLA:CPU uses) and
OMP_WAIT_POLICY=PASSIVE (`--omp-wait-policy`; with libgomp's default busy-waiting, two torch
threads on a shared, busy 2-core machine ran up to 6x slower than with PASSIVE, measured);
everything is compiled (jit) and warmed up first; then every round runs every configuration of a
bench once, in a fixed interleaved order; medians over rounds are reported. tokens/s counts
B x (input + target) tokens per step / forward. Bars: flix LoRA training tokens/s >= PEFT LoRA's
(issue #7, T5; issue 15: >= 1.5x for the decoder); the FLix batch with 16 distinct combinations
>= 3x as fast as PEFT's mixed batch (both).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.bench import core
from experiments.bench.core import Case
from experiments.bench.peft_decoder import DecoderArch
from experiments.bench.synthetic import (add_size_flags, batch_ids, combinations, feature_config,
                                  forward, model_config, random_params, random_tokens,
                                  shift_right, trainer_batch, uniform_ids)
from flix.checkpoints import adapter_leaves, graft, strip_adapters
from flix.config import FlixConfig
from flix.interop import hf, peft_export
from flix.layers import is_adapter_name
from flix.models.decoder import DecoderConfig
from flix.models.model import EncoderDecoderModel
from flix.models.t5 import T5, T5Config
from flix.trainable import freeze_base, trainable_mask
from flix.training.optimizers import make_optimizer
from flix.training.state import TrainState
from flix.training.step import StepConfig, make_train_step

LEARNING_RATE = 1e-3
CLIP_NORM = 1.0  # make_optimizer's default global-norm clipping; the torch step does the same.
BAR_INFER = 3.0  # FLix with 16 distinct combinations >= 3x PEFT's mixed-adapter batch.
BAR_ADAPTERS = 16
LOGITS_TOL = 1e-4  # max |difference| <= tol x max(1, max |logit|) (measured: ~3e-6 x).
GRAD_TOL = 1e-3  # per matrix: max |difference| <= tol x max |gradient| (measured: ~1e-5).
TORCH = "torch+peft"


def require_hf(omp_wait_policy: str | None = None):
  """(torch, transformers, peft), or SystemExit with a one-line message naming the extra.

  `omp_wait_policy` sets OMP_WAIT_POLICY for torch's OpenMP runtime, which reads it when torch
  is first imported (a later value has no effect: `run` logs and records that case).
  """
  if omp_wait_policy is not None and "torch" not in sys.modules:
    os.environ["OMP_WAIT_POLICY"] = omp_wait_policy
  try:
    import peft
    import safetensors  # noqa: F401 (flix.interop.hf.save_hf writes with it)
    import torch
    import transformers
  except ImportError as e:
    raise SystemExit(f"python -m experiments.bench peft: error: needs the hf extra (torch, transformers, "
                     f"peft, safetensors): {e}; install it with pip install -e '.[hf]'") from None
  return torch, transformers, peft


class T5Arch:
  """What the bench needs of the T5 family (the module docstring's model, batch and loss)."""

  name = "t5"
  bar_train = 1.0  # Issue #7: flix LoRA tokens/s >= PEFT LoRA's.
  network = T5
  model_object = EncoderDecoderModel
  targets = "every projection (PEFT target_modules k, o, q, v, wi_0, wi_1, wo)"
  train = "forward + backward + optimizer step, dropout on, base frozen"
  infer = "teacher-forced logits (encoder + decoder forward, no KV cache)"

  @staticmethod
  def config(args: argparse.Namespace) -> T5Config:
    return model_config(args)

  @staticmethod
  def hf_class(transformers):
    return transformers.T5ForConditionalGeneration

  @staticmethod
  def tokens(rng: np.random.Generator, cfg: T5Config, args: argparse.Namespace) -> dict:
    """{"enc": int32 `[B, in_len]`, "dec", "targets": int32 `[B, out_len]`}."""
    targets = random_tokens(rng, cfg.vocab_size, (args.batch, args.out_len))
    return {"enc": random_tokens(rng, cfg.vocab_size, (args.batch, args.in_len)),
            "dec": shift_right(targets), "targets": targets}

  @staticmethod
  def flix_inputs(tokens: dict) -> tuple:
    """`T5.apply`'s inputs before the feature ids."""
    return jnp.asarray(tokens["enc"]), jnp.asarray(tokens["dec"])

  @staticmethod
  def flix_loss(logits: jax.Array, tokens: dict) -> jax.Array:
    """Mean token cross-entropy (every target token counts)."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tokens["targets"]))

  @staticmethod
  def trainer_batch(tokens: dict, ids: np.ndarray) -> dict[str, jax.Array]:
    return trainer_batch(tokens["enc"], tokens["targets"], ids)

  @staticmethod
  def torch_batch(torch, tokens: dict) -> dict:
    """{"inputs": forward kwargs, "labels": long `[B, out_len]`}."""
    enc = torch.as_tensor(tokens["enc"], dtype=torch.long)
    return {"inputs": {"input_ids": enc, "attention_mask": (enc != 0).long(),
                       "decoder_input_ids": torch.as_tensor(tokens["dec"], dtype=torch.long)},
            "labels": torch.as_tensor(tokens["targets"], dtype=torch.long)}

  @staticmethod
  def torch_loss(torch, model, batch: dict):
    """(HF's mean token cross-entropy of `labels`, logits `[B, out_len, V]`)."""
    del torch
    out = model(**batch["inputs"], labels=batch["labels"], use_cache=False)
    return out.loss, out.logits

  @staticmethod
  def describe(cfg: T5Config) -> dict:
    return {"t5": dataclasses.asdict(cfg)}


ARCHS = {"t5": T5Arch, "decoder": DecoderArch}


def train_batch(arch, flix: FlixConfig | None, tokens: dict, seed: int) -> dict:
  """The trainer's batch dict for `tokens` (numpy); FLix ids drawn uniformly."""
  ids = uniform_ids(flix, len(tokens["targets"]), np.random.default_rng(seed + 2))
  return arch.trainer_batch(tokens, ids)


def flix_train_step(model, params, batch: dict, seed: int) -> Callable[[], None]:
  """The trainer's jitted, state-donating AdamW step of model object `model` on `batch`,
  compiled; returns a runner."""
  optimizer = freeze_base(make_optimizer("adamw", learning_rate=LEARNING_RATE,
                                         clip_norm=CLIP_NORM), params, "lora")
  state = TrainState(step=jnp.int32(0), params=jax.tree.map(jnp.array, params),  # Copies.
                     opt_state=optimizer.init(params),
                     rng=jax.random.key_data(jax.random.key(seed)))
  step = jax.jit(make_train_step(model, optimizer,
                                 trainable_mask(params, "lora"), StepConfig()),
                 donate_argnums=0)
  compiled = step.lower(state, batch).compile()
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready((holder["state"], metrics))

  return run


def torch_train_step(torch, arch, model, tokens: dict, adamw: str) -> Callable[[], None]:
  """forward + backward + clip + AdamW step of a PeftModel in train mode; returns a runner."""
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  kind = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
  opt = torch.optim.AdamW(params, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=0.0, **kind[adamw])
  batch = arch.torch_batch(torch, tokens)

  def run():
    opt.zero_grad(set_to_none=True)
    loss, _ = arch.torch_loss(torch, model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
    opt.step()

  return run


def torch_forward(torch, arch, model, tokens: dict, adapter_names: list[str] | None
                  ) -> Callable[[], np.ndarray]:
  """Teacher-forced logits of `model` (eval, inference mode), optionally a mixed adapter batch."""
  inputs = arch.torch_batch(torch, tokens)["inputs"]
  extra = {} if adapter_names is None else {"adapter_names": adapter_names}

  def run():
    with torch.inference_mode():
      return model(**inputs, use_cache=False, **extra).logits

  return run


def flix_forward(arch, model, params, tokens: dict, ids) -> Callable[[], jax.Array]:
  """Teacher-forced logits of network `model` (jit, compiled on the first call); ids
  `[B, n_types]` or None."""
  inputs = arch.flix_inputs(tokens)
  ids = None if ids is None else jnp.asarray(ids)
  return lambda: jax.block_until_ready(forward(model, params, *inputs, ids))


# -- equivalence ----------------------------------------------------------------------------------
def assert_close(got: np.ndarray, ref: np.ndarray, what: str) -> float:
  """max |got - ref| <= LOGITS_TOL x max(1, max |ref|), else AssertionError; returns the diff."""
  diff = float(np.abs(got - ref).max())
  bound = LOGITS_TOL * max(1.0, float(np.abs(ref).max()))
  if not diff <= bound:
    raise AssertionError(f"equivalence check failed: {what}: max |difference| {diff:.3g} > "
                         f"{bound:.3g}; the comparison would not be apples to apples")
  return diff


@functools.partial(jax.jit, static_argnums=(0, 1))
def loss_and_grads(arch, model, params, tokens: dict):
  """((the arch's loss, logits), its gradients w.r.t. params) of network `model` without
  feature ids; compiled once per arch, model and shapes."""

  def loss_fn(p):
    logits = model.apply({"params": p}, *arch.flix_inputs(tokens), None)
    return arch.flix_loss(logits, tokens), logits

  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def check_lora(torch, arch, peft_model, model, params, cfg, tokens: dict) -> dict:
  """PEFT LoRA == flix LoRA: trainable set, logits, loss and adapter gradients (dropout off)."""
  expected = {}
  for path, hf_module, _ in hf.projection_map(cfg):
    expected[f"base_model.model.{hf_module}.lora_A.default.weight"] = (path, "lora_a_shared")
    expected[f"base_model.model.{hf_module}.lora_B.default.weight"] = (path, "lora_b_shared")
  trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
  if set(trainable) != set(expected):
    extra, missing = sorted(set(trainable) - set(expected)), sorted(set(expected) - set(trainable))
    raise AssertionError(f"equivalence check failed: PEFT trains other parameters than flix "
                         f"LoRA: extra {extra[:4]}, missing {missing[:4]}")
  n_flix = sum(int(np.prod(v.shape)) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
               if is_adapter_name(p[-1].key))
  n_torch = sum(p.numel() for p in trainable.values())
  if n_torch != n_flix:
    raise AssertionError(f"equivalence check failed: {n_torch} trainable values in PEFT, "
                         f"{n_flix} in flix LoRA")

  peft_model.eval()
  peft_model.zero_grad(set_to_none=True)
  loss, out_logits = arch.torch_loss(torch, peft_model, arch.torch_batch(torch, tokens))
  loss.backward()
  torch_logits = out_logits.detach().numpy()
  (flix_loss, logits), grads = loss_and_grads(arch, model, params, tokens)
  logits_diff = assert_close(torch_logits, np.asarray(logits), "PEFT LoRA vs flix LoRA logits")
  loss_diff = assert_close(np.float32(loss.item()), np.asarray(flix_loss),
                           "PEFT LoRA vs flix LoRA loss")
  grad_diff = 0.0
  for name, (path, leaf) in expected.items():
    g = grads
    for k in path:
      g = g[k]
    ref = np.asarray(g[leaf])
    got = trainable[name].grad.numpy()
    if name.endswith("lora_B.default.weight"):
      got = got.T  # PEFT's lora_B is (out, r); flix's B is (r, out). A is (r, in) in both.
    diff = float(np.abs(got - ref).max()) / max(float(np.abs(ref).max()), 1e-30)
    if not diff <= GRAD_TOL:
      raise AssertionError(f"equivalence check failed: gradient of {name}: relative max "
                           f"difference {diff:.3g} > {GRAD_TOL} (PEFT vs flix LoRA)")
    grad_diff = max(grad_diff, diff)
  peft_model.zero_grad(set_to_none=True)
  return {"lora_trainable_values": n_flix, "lora_logits_max_abs_diff": logits_diff,
          "lora_loss_abs_diff": loss_diff,
          "lora_grad_max_rel_diff": grad_diff}


# -- the bench ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
  """Both frameworks' models on the same weights, and the batch."""

  arch: type  # T5Arch or DecoderArch.
  cfg: T5Config | DecoderConfig
  lora: FlixConfig
  flix: FlixConfig
  models: dict  # "lora", "flix", "base" -> flix network (T5 or DecoderLM).
  params: dict  # "lora", "flix", "base" -> plain params (one base for all).
  combos: np.ndarray  # int32 [max adapters, 2]: PEFT adapter j = FLix combination combos[j].
  tokens: dict  # The arch's numpy batch (`T5Arch.tokens`, `DecoderArch.tokens`).
  hf_base: object  # T5ForConditionalGeneration / LlamaForCausalLM (eval).
  peft_lora: object  # PeftModel, one trainable LoRA adapter "default".
  mixed: object  # PeftModel holding adapters c0..c{n-1} (eval).


def build(args: argparse.Namespace, torch, transformers, peft) -> Setup:
  """Random flix weights; the HF base, PEFT LoRA and PEFT mixed models loaded from their exports."""
  arch = ARCHS[args.arch]
  cfg = arch.config(args)
  lora = FlixConfig.lora(args.rank)
  flix = feature_config(args.F, args.rank // 2)
  models = {"lora": arch.network(cfg, lora), "flix": arch.network(cfg, flix),
            "base": arch.network(cfg)}
  lora_params = random_params(models["lora"], args.seed)
  base_params = strip_adapters(lora_params)
  flix_adapters = adapter_leaves(random_params(models["flix"], args.seed + 10))
  params = {"lora": lora_params, "base": base_params, "flix": graft(base_params, flix_adapters)}
  combos = combinations(flix, max(args.adapters), args.seed)
  tokens = arch.tokens(np.random.default_rng(args.seed), cfg, args)
  with tempfile.TemporaryDirectory(prefix="flix-bench-peft-") as tmp:
    base_dir = hf.save_hf(os.path.join(tmp, "base"), base_params, cfg)
    save_peft = peft_export.save_peft
    lora_dir = save_peft(os.path.join(tmp, "lora"), lora_params, cfg, lora,
                         np.zeros((0,), np.int32))
    combo_dirs = [save_peft(os.path.join(tmp, f"c{j}"), params["flix"], cfg, flix, c)
                  for j, c in enumerate(combos)]
    load_base = lambda: arch.hf_class(transformers).from_pretrained(base_dir,
                                                                    dtype=torch.float32)
    hf_base = load_base().eval()
    peft_lora = peft.PeftModel.from_pretrained(load_base(), lora_dir, is_trainable=True)
    mixed = peft.PeftModel.from_pretrained(load_base(), combo_dirs[0], adapter_name="c0")
    for j, path in enumerate(combo_dirs[1:], 1):
      mixed.load_adapter(path, adapter_name=f"c{j}")
    mixed.eval()
  return Setup(arch, cfg, lora, flix, models, params, combos, tokens, hf_base, peft_lora, mixed)


def adapter_names(n: int, batch: int) -> list[str]:
  """PEFT adapter per example: c{i mod n} (matches `batch_ids(combos[:n], batch)`)."""
  return [f"c{i % n}" for i in range(batch)]


def check_equivalence(torch, s: Setup, adapters: list[int]) -> dict:
  """All checks of the module docstring; AssertionError on the first that fails."""
  a = s.arch
  checks = check_lora(torch, a, s.peft_lora, s.models["lora"], s.params["lora"], s.cfg, s.tokens)
  batch = len(s.tokens["targets"])
  base_logits = np.asarray(flix_forward(a, s.models["base"], s.params["base"], s.tokens, None)())
  checks["hf_base_logits_max_abs_diff"] = assert_close(
      torch_forward(torch, a, s.hf_base, s.tokens, None)().numpy(), base_logits,
      "HF vs flix base")
  for n in adapters:
    ref = np.asarray(flix_forward(a, s.models["flix"], s.params["flix"], s.tokens,
                                  batch_ids(s.combos[:n], batch))())
    checks[f"mixed_{n}_logits_max_abs_diff"] = assert_close(
        torch_forward(torch, a, s.mixed, s.tokens, adapter_names(n, batch))().numpy(), ref,
        f"PEFT mixed batch vs FLix batch with {n} combinations")
    effect = float(np.abs(ref - base_logits).max())
    if not effect > 100 * LOGITS_TOL * max(1.0, float(np.abs(ref).max())):
      raise AssertionError(f"equivalence check is vacuous: the FLix adapters change the logits "
                           f"by only {effect:.3g}")
    checks[f"mixed_{n}_adapter_effect_max_abs"] = effect
  return checks


def run(args: argparse.Namespace) -> dict:
  imported = "torch" in sys.modules
  torch, transformers, peft = require_hf(args.omp_wait_policy)
  policy = os.environ.get("OMP_WAIT_POLICY")
  if imported and policy != args.omp_wait_policy:
    core.log(f"peft: torch was imported before the bench: OMP_WAIT_POLICY is {policy!r}, not "
             f"{args.omp_wait_policy!r}")
  load = os.getloadavg()
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  transformers.logging.set_verbosity_error()  # Loading notes; the checks below verify the models.
  start = time.perf_counter()
  s = build(args, torch, transformers, peft)
  a = s.arch
  core.log(f"peft: built the models in {time.perf_counter() - start:.1f} s")
  checks = check_equivalence(torch, s, args.adapters)
  core.log(f"peft: equivalence checks passed: {checks}")

  tokens = args.batch * (args.in_len + args.out_len)
  setting = lambda f=None, n=None: {"F": f, "adapters": n}
  train_cases = [
      Case("train", TORCH, "lora", setting(), tokens,
           torch_train_step(torch, a, s.peft_lora, s.tokens, args.torch_adamw)),
      Case("train", "flix", "lora", setting(), tokens,
           flix_train_step(a.model_object(s.models["lora"]), s.params["lora"],
                           train_batch(a, None, s.tokens, args.seed), args.seed)),
      Case("train", "flix", "flix", setting(args.F), tokens,
           flix_train_step(a.model_object(s.models["flix"]), s.params["flix"],
                           train_batch(a, s.flix, s.tokens, args.seed), args.seed))]
  core.time_cases(train_cases, args.repeats, args.warmup, "peft train")

  s.peft_lora.eval()
  infer_cases = [Case("infer", TORCH, "base", setting(), tokens,
                      torch_forward(torch, a, s.hf_base, s.tokens, None)),
                 Case("infer", TORCH, "lora", setting(), tokens,
                      torch_forward(torch, a, s.peft_lora, s.tokens, None))]
  infer_cases += [Case("infer", TORCH, "mixed", setting(n=n), tokens,
                       torch_forward(torch, a, s.mixed, s.tokens, adapter_names(n, args.batch)))
                  for n in args.adapters]
  infer_cases += [Case("infer", "flix", "base", setting(), tokens,
                       flix_forward(a, s.models["base"], s.params["base"], s.tokens, None)),
                  Case("infer", "flix", "lora", setting(), tokens,
                       flix_forward(a, s.models["lora"], s.params["lora"], s.tokens, None))]
  infer_cases += [Case("infer", "flix", "flix", setting(args.F, n), tokens,
                       flix_forward(a, s.models["flix"], s.params["flix"], s.tokens,
                                    batch_ids(s.combos[:n], args.batch)))
                  for n in args.adapters]
  core.time_cases(infer_cases, args.infer_repeats, args.warmup, "peft infer")

  records = make_records(train_cases + infer_cases)
  bars = check_bars(records, a.bar_train)
  print(core.table(COLUMNS, records))
  print(format_bars(bars))
  result = {"config": {
      "command": "peft", "arch": a.name, "model": args.model, **a.describe(s.cfg),
      "batch": args.batch, "input_length": args.in_len, "target_length": args.out_len,
      "lora_rank": args.rank, "flix_rank_per_type": args.rank // 2, "F": args.F,
      "feature_types": ["task", "lang"], "adapters": list(args.adapters),
      "combinations": s.combos.tolist(), "flix_strategy": s.flix.resolved_strategy(),
      "targets": a.targets,
      "optimizer": f"AdamW lr {LEARNING_RATE}, betas (0.9, 0.999), eps 1e-8, no weight decay, "
                   f"global-norm clip {CLIP_NORM}", "torch_adamw": args.torch_adamw,
      "train": a.train, "infer": a.infer,
      "tokens": "batch x (input + target length)", "repeats": args.repeats,
      "infer_repeats": args.infer_repeats,
      "warmup": args.warmup, "seed": args.seed, "dtype": "float32",
      "statistic": "median over interleaved rounds", "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(), "omp_wait_policy": policy,
      "torch_imported_before_bench": imported, "transformers": transformers.__version__,
      "peft": peft.__version__, **core.environment(load)},
      "checks": checks, "records": records, "bars": bars}
  core.write_json(args.json, result)
  return result


def make_records(cases: list[Case]) -> list[dict]:
  """Medians, ratio_vs_base (infer: vs the same framework's base) and speedup_vs_torch (the
  torch counterpart's median / this one's: train vs PEFT LoRA; infer: FLix vs PEFT's mixed batch
  with as many adapters, LoRA vs PEFT LoRA, base vs HF base)."""
  records = [c.record() for c in cases]
  seconds = {(r["bench"], r["framework"], r["method"], r["adapters"]): r["seconds"]
             for r in records}
  for r in records:
    if r["bench"] == "train":
      torch_key = ("train", TORCH, "lora", None)
    else:
      torch_key = ("infer", TORCH, {"flix": "mixed"}.get(r["method"], r["method"]), r["adapters"])
      r["ratio_vs_base"] = r["seconds"] / seconds[("infer", r["framework"], "base", None)]
    r["speedup_vs_torch"] = seconds[torch_key] / r["seconds"]
  return records


def check_bars(records: list[dict], bar_train: float) -> dict:
  """The two bars' verdicts: flix LoRA training tokens/s >= `bar_train` x PEFT LoRA's, and the
  FLix batch with the most combinations >= BAR_INFER x as fast as PEFT's mixed batch."""
  find = lambda **kv: next(r for r in records if all(r[k] == v for k, v in kv.items()))
  flix_lora = find(bench="train", framework="flix", method="lora")
  peft_lora = find(bench="train", framework=TORCH, method="lora")
  n = max(r["adapters"] for r in records if r["method"] == "mixed")
  flix_n = find(bench="infer", framework="flix", method="flix", adapters=n)
  train_ratio = flix_lora["tokens_per_s"] / peft_lora["tokens_per_s"]
  return {"train_lora": {"flix_tokens_per_s": flix_lora["tokens_per_s"],
                         "peft_tokens_per_s": peft_lora["tokens_per_s"],
                         "flix_vs_peft": train_ratio, "limit": bar_train,
                         "holds": train_ratio >= bar_train},
          "infer_mixed": {"adapters": n, "is_the_issue_setting": n == BAR_ADAPTERS,
                          "flix_speedup_vs_peft": flix_n["speedup_vs_torch"],
                          "limit": BAR_INFER, "holds": flix_n["speedup_vs_torch"] >= BAR_INFER}}


COLUMNS = [("bench", lambda r: r["bench"]), ("framework", lambda r: r["framework"]),
           ("method", lambda r: r["method"]), ("F", lambda r: core.dash(r["F"])),
           ("adapters", lambda r: core.dash(r["adapters"])),
           ("median ms", lambda r: f"{r['seconds'] * 1e3:.1f}"),
           ("min ms", lambda r: f"{r['min_seconds'] * 1e3:.1f}"),
           ("tokens/s", lambda r: f"{r['tokens_per_s']:.0f}"),
           ("x base", lambda r: core.dash(r.get("ratio_vs_base"), ".3f")),
           ("speedup vs torch", lambda r: f"{r['speedup_vs_torch']:.3f}")]


def format_bars(bars: dict) -> str:
  t, i = bars["train_lora"], bars["infer_mixed"]
  note = "" if i["is_the_issue_setting"] else " [not the issue setting of 16]"
  return "\n".join([
      core.bar_line(t["holds"], f"flix LoRA training = {t['flix_vs_peft']:.3f}x PEFT LoRA's "
                                f"tokens/s (limit >= {t['limit']})"),
      core.bar_line(i["holds"], f"FLix batch with {i['adapters']} combinations = "
                                f"{i['flix_speedup_vs_peft']:.3f}x as fast as PEFT's mixed "
                                f"batch (limit >= {i['limit']}){note}")])


def add_parser(sub) -> None:
  p = sub.add_parser("peft", help="transformers+PEFT LoRA vs flix LoRA/FLix: training tokens/s "
                                  "and mixed-adapter inference (needs the hf extra)")
  p.add_argument("--arch", choices=sorted(ARCHS), default="t5",
                 help="t5: the tiny T5.1.1 (T5ForConditionalGeneration); decoder: a tiny Llama "
                      "(LlamaForCausalLM) on a prefix-LM batch (experiments.bench.peft_decoder)")
  add_size_flags(p)
  p.add_argument("--num-kv-heads", type=int, default=None,
                 help="--arch decoder: override the key/value heads (GQA)")
  p.add_argument("--rank", type=int, default=16,
                 help="LoRA / PEFT rank; FLix uses rank/2 per type (two active types)")
  p.add_argument("--F", type=int, default=64,
                 help="FLix feature count (two types of F/2 values); (F/2)^2 >= max(--adapters)")
  p.add_argument("--adapters", type=core.int_list, default=[1, 4, 16],
                 help="comma-separated distinct adapters (combinations) per inference batch")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--in-len", type=int, default=64)
  p.add_argument("--out-len", type=int, default=32)
  p.add_argument("--repeats", type=int, default=7, help="timed interleaved training rounds")
  p.add_argument("--infer-repeats", type=int, default=15,
                 help="timed interleaved inference rounds (a forward is short and noisy)")
  p.add_argument("--warmup", type=int, default=2, help="untimed calls per configuration")
  p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                 help="torch.set_num_threads (default: every core, as XLA:CPU uses)")
  p.add_argument("--torch-adamw", choices=("loop", "foreach", "fused"), default="fused",
                 help="torch.optim.AdamW implementation")
  p.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE"), default="PASSIVE",
                 help="OMP_WAIT_POLICY for torch (set before torch is imported): libgomp's "
                      "default spinning makes torch several times slower on a busy machine")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", help="write the results here")
  p.set_defaults(run=run, check=check_args)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  args.adapters = sorted(set(args.adapters))
  if not args.adapters or args.adapters[0] < 1:
    parser.error(f"--adapters must be positive counts, got {args.adapters}")
  if args.rank < 2 or args.rank % 2:
    parser.error(f"--rank must be even and >= 2 (FLix uses rank/2 per type), got {args.rank}")
  if args.F < 2 or args.F % 2:
    parser.error(f"--F must be an even number >= 2 (two feature types), got {args.F}")
  if (args.F // 2) ** 2 < args.adapters[-1]:
    parser.error(f"--F {args.F} gives {(args.F // 2) ** 2} combinations, fewer than "
                 f"{args.adapters[-1]} adapters")
  if args.batch < args.adapters[-1]:
    parser.error(f"--batch {args.batch} < {args.adapters[-1]} adapters: a batch cannot hold them")
  if min(args.in_len, args.out_len, args.repeats, args.infer_repeats, args.threads,
         args.warmup) < 1:
    parser.error("--in-len, --out-len, --repeats, --infer-repeats, --threads and --warmup "
                 "must be >= 1")
  if args.arch != "decoder" and args.num_kv_heads is not None:
    parser.error(f"--num-kv-heads {args.num_kv_heads} needs --arch decoder (T5 has no GQA)")
  try:
    ARCHS[args.arch].config(args)
  except ValueError as e:
    parser.error(f"--arch {args.arch}: invalid model size: {e}")
