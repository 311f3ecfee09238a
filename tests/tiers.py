"""The tests moved out of `make test` into its second tier, and why.

`make test` is a newcomer's check: at most 5 minutes of pytest on a 2-core machine. Each test
below repeats end to end, or for a second model family or optimizer, a property that a
`make test` test already checks at the level of the library function; it runs in the second
tier (`make test-tier2`, which CI runs right after `make test`, and `make test-slow`).
An entry is one test (`file::name[id]`) or a whole file (`file`). Contended CPU seconds on 2
cores (2026-12-07) in brackets. `tests/test_tiers.py` checks that every entry names a test or a
file that exists.
"""

TIER2 = {
    # Whole training runs of `python -m flix.train` (each compiles its own programs).
    "test_training.py::test_mesh_data4_model2_matches_one_device":
        "two runs, one on a (4, 2) mesh of 8 devices [79 s]; make test compiles the "
        "sharded step (test_compile) but runs no sharded step",
    "test_training.py::test_adapter_only_checkpoint_holds_adapters_and_references_base":
        "a full-model run, then a FLix run on it [39 s]; adapter-only checkpoints are also "
        "written by test_decoder_training and test_vocab's T5X run (both second tier)",
    "test_training.py::test_sigterm_saves_a_checkpoint_then_exits":
        "a training subprocess stopped by SIGTERM [31 s]; the one-process SIGTERM check "
        "(test_multihost checks two processes)",
    "test_training.py::test_nan_loss_stops_keeps_last_good_checkpoint_and_closes_files":
        "a run driven to a NaN loss [27 s]; the only NaN-stop check",
    "test_training.py::test_in_training_eval_writes_metrics_and_keeps_the_best_checkpoint":
        "a run with periodic evaluation [29 s]; make test: test_evaluation's PairEvaluator "
        "and test_eval_and_infer_of_the_trained_checkpoint",
    "test_training.py::test_mixture_or_task_module_registers_the_users_task":
        "train, eval and infer through a user's task module [20 s]; make test: "
        "test_mixture_or_task_module_import_registers_its_tasks (the import that the entry "
        "points call first) and the import refusal in test_user_errors_are_one_clear_line",
    "test_sparse_step.py::test_trainer_row_sparse_resume_is_exact":
        "two runs with the row-sparse optimizer [39 s]; make test: the row-sparse step "
        "equals the dense one (test_lazy_dense_step_equals_row_sparse_step) and dense "
        "resume is exact (test_training)",
    "test_vocab.py::test_sentencepiece_train_eval_infer":
        "train, eval and infer with a SentencePiece model [40 s]; make test: test_vocab's "
        "vocabulary checks",
    "test_decoder_training.py::test_decoder_only_train_eval_infer":
        "train, eval and infer of a decoder-only model [37 s]; make test: test_decoder's "
        "loss, decoding and converter tests",
    # A second family, optimizer or decoding method of a property make test checks.
    "test_bf16.py::test_bfloat16_train_steps_track_float32_and_keep_float32_state[t5]":
        "[35 s]; bfloat16 is second tier for both families",
    "test_bf16.py::test_bfloat16_greedy_decoding_scores_its_own_tokens[t5]":
        "[43 s]; bfloat16 is second tier for both families",
    "test_sparse_step.py::test_lazy_dense_step_equals_row_sparse_step[all-adafactor]":
        "[19 s]; make test: [all-adamw] and [some-adamw]",
    "test_sparse_step.py::test_feature_dropout_on_lazy_dense_and_row_sparse_steps":
        "[19 s]; make test: test_t5's feature dropout and the sparse steps without it",
    "test_bf16.py::test_bfloat16_greedy_decoding_scores_its_own_tokens[decoder]":
        "[23 s]; bfloat16 decoding is second tier for both families",
    "test_sparse_step.py::test_lazy_dense_step_equals_row_sparse_step[some-adafactor]":
        "[15 s]; make test: [all-adamw], [some-adamw] and "
        "test_absent_rows_are_bitwise_unchanged[adafactor]",
    "test_batches.py::test_restore_continues_exactly_and_equals_skipping[True]":
        "[22 s]; make test: the [False] case and test_packing's packed batches",
    "test_decoder.py::test_cached_greedy_equals_teacher_forced_argmax":
        "[19 s]; make test: the decoder's greedy tokens scored by teacher forcing "
        "(test_greedy_scores_are_the_teacher_forced_log_probs) and the T5 cached-vs-teacher-"
        "forced checks (the decoding loop is shared)",
    "test_decoding.py::test_one_beam_equals_greedy_without_eos":
        "[25 s]; make test: beam search against greedy and exhaustive search",
    "test_decoding.py::test_sampling_temperature_and_rng":
        "[23 s]; make test: test_decoder's sampling through predict_batch (the decoding "
        "loop is shared)",
    "test_data_xtreme_up.py::test_autocomplete_decodes_three_beams_and_other_tasks_one":
        "[24 s]; make test: test_task_predictors_route_per_task",
    # Opt-in layouts, dtype and a second family's interop: programs no make-test test compiles.
    "test_layout.py::test_layout_trains_as_one_device[2d_and_feature_sharded]":
        "3 steps on a (4, 2) mesh with 2-D partitioning and feature-sharded tables, against one "
        "device [36 s]; make test: the layouts' shardings (test_layout's spec checks, "
        "test_compile's table specs and collectives) without running a sharded step",
    "test_layout.py::test_layout_trains_as_one_device[remat_full]":
        "remat_policy='full' trains as without remat [13 s]; make test: the refusal of an "
        "unknown policy",
    "test_layout.py::test_layout_trains_as_one_device[scanned_2d_remat]":
        "3 scanned, rematerialised steps on a (4, 2) mesh with 2-D partitioning, against one "
        "device [41 s]; make test: test_scan's scanned-vs-unscanned outputs and gradients",
    "test_layout.py::test_checkpoints_restore_across_layouts":
        "needs the one-device run above [5 s + 18 s setup]; make test: test_training's "
        "checkpoint and resume tests in the default layout",
    "test_bf16.py::test_bfloat16_train_steps_track_float32_and_keep_float32_state[decoder]":
        "[18 s]; bfloat16 (ACTIVATION_DTYPE, opt-in) is second tier for both families",
    "test_scan.py::test_scanned_t5_equals_unscanned_on_its_parameters[none]":
        "scanned vs unrolled 2 + 2-layer T5, outputs and gradients [58 s, the file's "
        "compiles]; scanned layers are an opt-in TPU switch (StepConfig.scan_layers); make "
        "test: test_scan's parameter tree, stacking and table-sharding checks",
    "test_scan.py::test_scanned_t5_equals_unscanned_on_its_parameters[full]":
        "the same with remat inside the scan [20 s]",
    "test_scan.py::test_scanned_t5_decodes_as_unscanned":
        "greedy and beam decoding with a stacked KV cache [32 s]",
    "test_scan.py::test_scanned_decoder_equals_unscanned_and_decodes_the_same":
        "the decoder-only family's scanned stack [39 s]",
    "test_scan.py::test_compile_report_of_a_scanned_step_on_a_cpu_mesh":
        "flix.compile of a scanned step on cpu:8 [21 s]; make test: test_compile's reports",
    "test_decoder_hf.py":
        "Llama / Gemma / Mistral / Qwen2 from and to Hugging Face against transformers [35 s]; "
        "make test: test_hf_convert's T5 family through the same hf_state / hf_files code",
    # Checks of a real release on disk (../shared), minutes of reading.
    "test_data_morphology.py::test_real_release_counts_and_leakage":
        "reads the whole SIGMORPHON + WikiPron release [58 s + 22 s setup]; make test: the "
        "registration tests on generated files",
}
