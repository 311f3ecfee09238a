"""Parity check of a conversion: the transformers model and the flix model on one random batch.

    report = verify("path/to/hf_dir")                    # converted in memory
    report = verify("path/to/hf_dir", "path/to/ckpt")    # a flix checkpoint's base (no adapters)
    # {"architecture": "LlamaForCausalLM", "max_abs_logit_diff": 3.1e-06, "greedy_equal": true}

Both run in float32 (transformers with eager attention) on the same seeded random tokens
`[batch, length]` (T5: encoder inputs, and decoder inputs that start with token 0): the
largest |logit difference| over every position, and `steps` greedy tokens (flix's KV-cache
decoding against `generate(do_sample=False)` with the model's own EOS ids, sampling and
penalty options of its generation_config overridden), compared up to each row's first EOS.
`passed(report)`: difference <= TOLERANCE and the greedy tokens equal. Needs torch and
transformers (the `hf` extra).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flix.checkpoints import load_model, strip_adapters
from flix.errors import HFConversionError
from flix.interop import hf
from flix.interop.hf_files import read_hf_config
from flix.decoding import DecodeOptions
from flix.models.decoder import DecoderLM
from flix.models.families import family_of
from flix.models.model import DecoderOnlyModel, EncoderDecoderModel
from flix.models.t5 import T5

TOLERANCE = 1e-4


def _greedy(steps: int) -> DecodeOptions:
  """`steps` greedy tokens, EOS off (generate() runs max_new_tokens; compared up to EOS)."""
  return DecodeOptions(max_length=steps, method="greedy", eos_id=-1)


def passed(report: dict) -> bool:
  """Whether a `verify` report shows parity: logits within TOLERANCE, greedy tokens equal."""
  return report["max_abs_logit_diff"] <= TOLERANCE and report["greedy_equal"]


def _until_eos(row: np.ndarray, eos_ids: set[int]) -> list[int]:
  out = []
  for token in row.tolist():
    out.append(token)
    if token in eos_ids:
      break
  return out


def _eos_ids(model) -> set[int]:
  eos = model.generation_config.eos_token_id
  if eos is None:
    return set()
  return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _decoder_outputs(torch, model, config, params, rng, batch, length, steps):
  """(HF logits, flix logits, HF greedy `[b, steps]`, flix greedy) of a decoder-only LM."""
  tokens = rng.randint(0, config.vocab_size, (batch, length)).astype(np.int32)
  ids = torch.as_tensor(tokens, dtype=torch.long)
  mask = torch.ones_like(ids)
  with torch.no_grad():
    ref = model(input_ids=ids, attention_mask=mask).logits.numpy()
    ref_greedy = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                                repetition_penalty=1.0, max_new_tokens=steps).numpy()[:, length:]
  net = DecoderLM(config)
  ours = np.asarray(net.apply({"params": params}, tokens))
  greedy = DecoderOnlyModel(net).decode(params, tokens, options=_greedy(steps))
  return ref, ours, ref_greedy, np.asarray(greedy.tokens)


def _t5_outputs(torch, model, config, params, rng, batch, length, steps):
  """The same for a T5 encoder-decoder (encoder tokens avoid PAD 0 and EOS 1)."""
  enc = rng.randint(2, config.vocab_size, (batch, length)).astype(np.int32)
  dec = np.concatenate([np.zeros((batch, 1), np.int32),
                        rng.randint(2, config.vocab_size, (batch, length - 1))], 1).astype(np.int32)
  enc_t = torch.as_tensor(enc, dtype=torch.long)
  mask = torch.ones_like(enc_t)
  with torch.no_grad():
    ref = model(input_ids=enc_t, attention_mask=mask,
                decoder_input_ids=torch.as_tensor(dec, dtype=torch.long)).logits.numpy()
    ref_greedy = model.generate(input_ids=enc_t, attention_mask=mask, do_sample=False,
                                num_beams=1, repetition_penalty=1.0,
                                max_new_tokens=steps).numpy()[:, 1:]  # Without the start token.
  net = T5(config)
  ours = np.asarray(net.apply({"params": params}, enc, dec))
  greedy = EncoderDecoderModel(net).decode(params, enc, options=_greedy(steps))
  return ref, ours, ref_greedy, np.asarray(greedy.tokens)


_OUTPUTS = {"t5": _t5_outputs, "decoder": _decoder_outputs}


def verify(hf_dir: str, checkpoint: str | None = None, *, seed: int = 0, batch: int = 2,
           length: int = 8, steps: int = 4) -> dict:
  """{"architecture", "max_abs_logit_diff", "greedy_equal"} of `hf_dir`'s transformers model
  against its flix conversion (in memory), or against `checkpoint`'s base params."""
  import torch
  import transformers

  architecture = hf.architecture(read_hf_config(hf_dir))
  if checkpoint is None:
    config, params = hf.load_hf(hf_dir)
  else:
    config, _, params = load_model(checkpoint)
    params = strip_adapters(params)
    expected = hf.ARCHITECTURES[architecture]
    if hf.family_module(config) is not expected:
      raise HFConversionError(f"--checkpoint {checkpoint} holds a {type(config).__name__}, but "
                              f"{hf_dir} is a {architecture}")
  config = dataclasses.replace(config, dropout_rate=0.0, dtype="float32")
  torch.manual_seed(seed)
  model = getattr(transformers, architecture).from_pretrained(
      hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
  ref, ours, ref_greedy, greedy = _OUTPUTS[family_of(config)](
      torch, model, config, params, np.random.RandomState(seed), batch, length, steps)
  if ref.shape != ours.shape:
    raise HFConversionError(f"logits of {architecture} have shape {ref.shape}, flix's "
                            f"{ours.shape}: the checkpoint does not hold this model")
  eos = _eos_ids(model)
  greedy_equal = all(_until_eos(a, eos) == _until_eos(b, eos)
                     for a, b in zip(ref_greedy, greedy))
  return {"architecture": architecture,
          "max_abs_logit_diff": float(np.abs(ref - ours).max()),
          "greedy_equal": bool(greedy_equal)}
