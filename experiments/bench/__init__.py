"""Benchmarks: `python -m experiments.bench <bench> [flags] [--json OUT]`.

  layer   forward+backward of one `FlixDense` per compute strategy and feature count F (`layer`);
  train   whole train steps of the tiny T5 per method, optimizer and path: time, tokens/s and
          XLA's memory plan (`train`);
  peft    transformers + PEFT LoRA (torch) vs flix LoRA and FLix: training tokens/s and
          mixed-adapter inference on the tiny T5 or, with `--arch decoder`, a tiny Llama
          (`peft`, `peft_decoder`; needs the `hf` extra);
  decode  greedy KV-cache decoding: heterogeneous FLix batch vs merged vs base (`decode`);
  memory  host page faults per step with freed memory retained or not (`memory`);
  resume  the input pipeline's resume time at two data positions: iterator state vs skipping
          (`resume`);
  packing real (non-padding) tokens/s of training rows packed vs unpacked on the offline and
          morphology grids (`packing`);
  study   the study's fine-tuning step per study method, FLix strategy and optimizer, at the
          offline grid's sizes (`study_step`).

`core` holds the timing, environment and report every bench shares; `synthetic` the model
sizes, random weights and batches of the model benches.
"""
