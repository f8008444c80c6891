# `trustep train / infer / inspect --checkpoint` end to end under real mpirun (include()d from
# tests/CMakeLists.txt after cli_test and TRUSTEP_PYTHON are defined).
set(TRAIN_DIR ${CMAKE_CURRENT_BINARY_DIR}/train)
set(CHECKS ${TRUSTEP_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/train_checks.py)
set(TRAIN_CLI $<TARGET_FILE:trustep_cli>)
set(MPIRUN_SH "${MPIEXEC_BIN} --oversubscribe --bind-to none")
# A small model for the runs that only test mechanics (a fraction of a second per step).
set(SMALL "--hidden 32 --ffn 64 --layers 2 --heads 2 --kv-heads 1 --experts 4 --seq-len 24 --batch 4 --warmup 2 --log-every 100 --no-plots")
separate_arguments(SMALL_ARGS UNIX_COMMAND "${SMALL}")  # the same, as a list for cli_test

# The default run (configs/tiny.ini, 2 ranks): the loss falls by at least half, the plots are
# written, and its checkpoint feeds the infer / inspect tests below.
add_test(NAME train.tiny_default_halves_the_loss COMMAND sh -c "\
  set -e; rm -rf ${TRAIN_DIR}/tiny; \
  ${MPIRUN_SH} -np 2 ${TRAIN_CLI} train --config ${PROJECT_SOURCE_DIR}/configs/tiny.ini --out ${TRAIN_DIR}/tiny; \
  ${CHECKS} loss-drop ${TRAIN_DIR}/tiny/metrics.jsonl 0.5; \
  for f in loss.png trust_heatmap.png expert_load.png; do test -s ${TRAIN_DIR}/tiny/$f; done; echo plots-written")
set_tests_properties(train.tiny_default_halves_the_loss PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}" TIMEOUT 600
  PROCESSORS 2 FIXTURES_SETUP tiny_run PASS_REGULAR_EXPRESSION "drop [0-9.]+% .need 50%.*plots-written")

# Greedy generation from the same checkpoint on 1, 2 and 4 ranks (experts re-sharded 2 -> 1, 4).
add_test(NAME train.infer_is_the_same_on_any_number_of_ranks COMMAND sh -c "\
  set -e; \
  for n in 1 2 4; do ${MPIRUN_SH} -np $n ${TRAIN_CLI} infer --checkpoint ${TRAIN_DIR}/tiny/checkpoints \
    --prompt 'srt:hdbag=' --max-new-tokens 12 > ${TRAIN_DIR}/infer$n.txt; done; \
  cat ${TRAIN_DIR}/infer1.txt; cmp ${TRAIN_DIR}/infer1.txt ${TRAIN_DIR}/infer2.txt; \
  cmp ${TRAIN_DIR}/infer1.txt ${TRAIN_DIR}/infer4.txt; echo same-on-1-2-4")
set_tests_properties(train.infer_is_the_same_on_any_number_of_ranks PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}"
  TIMEOUT 120 PROCESSORS 2 FIXTURES_REQUIRED tiny_run PASS_REGULAR_EXPRESSION "srt:hdbag=[a-h]+.*same-on-1-2-4")
cli_test(infer_reports_tokens_per_second --exit 0 --match "infer: [0-9]+ new tokens in .* tokens/s"
  -- ${TRAIN_CLI} infer --backend self --checkpoint ${TRAIN_DIR}/tiny/checkpoints --prompt "cpy:abc=" --temperature 0.8)
set_tests_properties(cli.infer_reports_tokens_per_second PROPERTIES FIXTURES_REQUIRED tiny_run)
cli_test(inspect_checkpoint --exit 0 --match "trust .rows: contexts, columns: experts"
  -- ${TRAIN_CLI} inspect --backend self --checkpoint ${TRAIN_DIR}/tiny/checkpoints)
set_tests_properties(cli.inspect_checkpoint PROPERTIES FIXTURES_REQUIRED tiny_run)

# Stopping and resuming gives the same run bit for bit: checkpoint files and every metric,
# with poisoning, trust-first exploration and bf16 (fp32 masters) in play.
foreach(dtype fp32 bf16)
  set(RESUME_ARGS "${SMALL} --steps 12 --dtype ${dtype} --mode trust-first --epsilon 0.2 --trust-min-evidence 2 --poison-expert 1 --poison-from 3")
  set(A ${TRAIN_DIR}/resume-${dtype}-a)
  set(B ${TRAIN_DIR}/resume-${dtype}-b)
  add_test(NAME train.resume_is_bit_exact_${dtype} COMMAND sh -c "\
    set -e; rm -rf ${A} ${B}; \
    ${MPIRUN_SH} -np 2 ${TRAIN_CLI} train ${RESUME_ARGS} --out ${A}; \
    ${MPIRUN_SH} -np 2 ${TRAIN_CLI} train ${RESUME_ARGS} --out ${B} --stop-after 5; \
    ${MPIRUN_SH} -np 2 ${TRAIN_CLI} train ${RESUME_ARGS} --out ${B} --resume auto; \
    for f in replicated.safetensors shard-00000-of-00002.safetensors shard-00001-of-00002.safetensors routing.safetensors; do \
      cmp ${A}/checkpoints/step-00000012/$f ${B}/checkpoints/step-00000012/$f; done; \
    ${CHECKS} same-steps ${A}/metrics.jsonl ${B}/metrics.jsonl")
  set_tests_properties(train.resume_is_bit_exact_${dtype} PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}" TIMEOUT 180
    PROCESSORS 2 PASS_REGULAR_EXPRESSION "12 step records identical")
endforeach()

# A checkpoint written by 2 ranks resumes on 1, and one written by 1 resumes on 2.
set(R ${TRAIN_DIR}/reshard)
add_test(NAME train.resume_reshards_2_to_1_and_1_to_2 COMMAND sh -c "\
  set -e; rm -rf ${R}; \
  ${MPIRUN_SH} -np 2 ${TRAIN_CLI} train ${SMALL} --steps 9 --out ${R} --stop-after 3; \
  ${MPIRUN_SH} -np 1 ${TRAIN_CLI} train ${SMALL} --steps 9 --out ${R} --resume auto --stop-after 3; \
  ${MPIRUN_SH} -np 2 ${TRAIN_CLI} train ${SMALL} --steps 9 --out ${R} --resume auto")
set_tests_properties(train.resume_reshards_2_to_1_and_1_to_2 PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}" TIMEOUT 180
  PROCESSORS 2 PASS_REGULAR_EXPRESSION "step 3 .written by 2 ranks, now 1.*step 6 .written by 1 ranks, now 2.*train: 3 steps in")

# Bad configurations: a clear error on every rank, before any step.
cli_test(train_bad_option_every_rank --exit 2 --lines 2
  --match "^trustep: error: invalid value '3' for option '--heads'"
  -- ${MPIRUN} -np 2 ${TRAIN_CLI} train --heads 3 --out ${TRAIN_DIR}/bad)
cli_test(train_experts_not_divisible_every_rank --exit 1 --lines 4
  --match "invalid value '6' for option '--experts': must be a multiple of the world size .4 ranks."
  -- ${MPIRUN} -np 4 ${TRAIN_CLI} train --hidden 32 --ffn 64 --experts 6 --steps 2 --warmup 0 --no-plots --out ${TRAIN_DIR}/bad)
cli_test(train_missing_data_file --exit 2 --lines 2 --match "invalid value '/no/such/corpus.txt' for option '--data': cannot read the file"
  -- ${MPIRUN} -np 2 ${TRAIN_CLI} train --data /no/such/corpus.txt --out ${TRAIN_DIR}/bad)
cli_test(train_unknown_config_section --exit 2 --match "unknown section .trian."
  -- ${TRAIN_CLI} train --backend self --config ${CMAKE_CURRENT_SOURCE_DIR}/data/bad_section.ini)
cli_test(train_resume_other_model --exit 1 --lines 2
  --match "checkpoint '.*' holds a different model: hidden is 128 there, 64 here.*on every rank"
  -- ${MPIRUN} -np 2 ${TRAIN_CLI} train --hidden 64 --out ${TRAIN_DIR}/other --resume ${TRAIN_DIR}/tiny/checkpoints)
set_tests_properties(cli.train_resume_other_model PROPERTIES FIXTURES_REQUIRED tiny_run)
# A checkpoint that cannot be read fails every rank together (no abort, no hang).
cli_test(infer_missing_checkpoint_every_rank --exit 1 --lines 2
  --match "infer: --checkpoint /no/such/ckpt: .*/no/such/ckpt.* .on every rank.$"
  -- ${MPIRUN} -np 2 ${TRAIN_CLI} infer --checkpoint /no/such/ckpt --prompt "cpy:ab=")


# Plain text (--data, a disjoint byte range per rank) with k-means contexts per layer.
add_test(NAME train.text_file_with_kmeans_contexts COMMAND sh -c "\
  set -e; rm -rf ${TRAIN_DIR}/text; \
  ${MPIRUN_SH} -np 2 ${TRAIN_CLI} train ${SMALL} --steps 6 --data ${PROJECT_SOURCE_DIR}/README.md \
    --contexts-from kmeans --contexts 3 --mode trust-first --trust-min-evidence 4 --out ${TRAIN_DIR}/text; \
  ${TRAIN_CLI} inspect --backend self --checkpoint ${TRAIN_DIR}/text/checkpoints")
set_tests_properties(train.text_file_with_kmeans_contexts PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}" TIMEOUT 120
  PROCESSORS 2 PASS_REGULAR_EXPRESSION "train: 6 steps in.*cluster2 ")
