# The bad-launch and fault catalogue of docs/reliability.md, one test per entry that is not
# already covered elsewhere (the document names each test). include()d from tests/CMakeLists.txt
# after train.cmake (uses cli_test, SMALL, SMALL_ARGS, TRAIN_DIR, MPIRUN_SH, TRAIN_CLI).
set(FAULT_DIR ${CMAKE_CURRENT_BINARY_DIR}/faults)

# Ranks launched with different settings: every rank names the option and who holds what.
foreach(case "dtype;fp32;bf16" "hidden;32;48" "experts;4;8" "mode;blend;trust-first")
  list(GET case 0 option)
  list(GET case 1 a)
  list(GET case 2 b)
  cli_test(ranks_disagree_on_${option} --exit 1 --lines 2
    --match "ranks disagree on their command line and config file: '--${option}' is '${a}' on rank 0, '${b}' on rank 1 .raised on every rank.$"
    -- ${MPIRUN} -np 1 ${TRAIN_CLI} train --steps 1 --warmup 0 --no-plots --out ${FAULT_DIR}/disagree --${option} ${a}
               : -np 1 ${TRAIN_CLI} train --steps 1 --warmup 0 --no-plots --out ${FAULT_DIR}/disagree --${option} ${b})
endforeach()

cli_test(train_top_k_above_experts_every_rank --exit 2 --lines 2
  --match "invalid value '5' for option '--top-k'"
  -- ${MPIRUN} -np 2 ${TRAIN_CLI} train ${SMALL_ARGS} --top-k 5 --out ${FAULT_DIR}/topk)

# NaN in activations (a NaN-emitting expert from step 2 on). Without --check-finite the reduced
# loss stops every rank; with it, every rank names the first layer whose router saw NaN.
cli_test(train_nan_loss_stops_every_rank --exit 1 --lines 2
  --match "train: step 3: the loss is nan .* .on every rank.$"
  -- ${MPIRUN} -np 2 ${TRAIN_CLI} train ${SMALL_ARGS} --steps 6 --poison-expert 1 --poison-kind nan --poison-from 2
     --out ${FAULT_DIR}/nan)
cli_test(train_check_finite_names_the_layer --exit 1 --lines 2
  --match "MoE layer 1 .--check-finite.: .*router logits contain NaN or Inf .layer 1, rank [01].*on every rank"
  -- ${MPIRUN} -np 2 ${TRAIN_CLI} train ${SMALL_ARGS} --steps 6 --poison-expert 1 --poison-kind nan --poison-from 2
     --check-finite --out ${FAULT_DIR}/nan-checked)
cli_test(train_bad_poison_kind --exit 2 --match "invalid value 'inf' for option '--poison-kind': expected noise or nan"
  -- ${TRAIN_CLI} train --backend self --poison-kind inf --out ${FAULT_DIR}/bad)

# A checkpoint with one flipped byte, or cut short, fails every rank together on resume.
set(CK ${FAULT_DIR}/ckpt)
set(SHARD ${CK}/checkpoints/step-00000003/shard-00001-of-00002.safetensors)
add_test(NAME fixture.small_checkpoint COMMAND sh -c "\
  set -e; rm -rf ${CK}; ${MPIRUN_SH} -np 2 ${TRAIN_CLI} train ${SMALL} --steps 3 --out ${CK}; \
  cp ${SHARD} ${CK}/good-shard")
set_tests_properties(fixture.small_checkpoint PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}" TIMEOUT 120 PROCESSORS 2
  FIXTURES_SETUP small_checkpoint)
add_test(NAME train.corrupt_checkpoint_fails_every_rank COMMAND ${EXPECT} --exit 1 --lines 2
  --match "--resume .*: .*shard-00001-of-00002.safetensors' is corrupted: crc32 .* .on every rank.$"
  -- sh -c "\
  set -e; cp ${CK}/good-shard ${SHARD}; \
  printf X | dd of=${SHARD} bs=1 seek=200 conv=notrunc status=none; \
  ${MPIRUN_SH} -np 2 ${TRAIN_CLI} train ${SMALL} --steps 4 --out ${CK} --resume auto")
add_test(NAME train.truncated_checkpoint_fails_every_rank COMMAND ${EXPECT} --exit 1 --lines 2
  --match "--resume .*: .*shard-00001-of-00002.safetensors' has [0-9]+ bytes but the manifest says [0-9]+ .truncated or overwritten. .on every rank.$"
  -- sh -c "\
  set -e; cp ${CK}/good-shard ${SHARD}; truncate -s 100 ${SHARD}; \
  ${MPIRUN_SH} -np 2 ${TRAIN_CLI} train ${SMALL} --steps 4 --out ${CK} --resume auto")
set_tests_properties(train.corrupt_checkpoint_fails_every_rank train.truncated_checkpoint_fails_every_rank PROPERTIES
  ENVIRONMENT "${MPI_TEST_ENV}" TIMEOUT 120 PROCESSORS 2 FIXTURES_REQUIRED small_checkpoint RESOURCE_LOCK small_checkpoint)

# The disk fills up while step 4's checkpoint is written (an LD_PRELOAD shim fails writes into
# it with ENOSPC after 1000 bytes): every rank fails together, step 2's checkpoint stays the
# latest, reads back and resumes.
add_library(trustep_enospc_shim MODULE enospc_shim.c)
target_link_libraries(trustep_enospc_shim PRIVATE ${CMAKE_DL_LIBS})
set(DF ${FAULT_DIR}/disk-full)
add_test(NAME train.disk_full_keeps_the_previous_checkpoint COMMAND sh -c "\
  rm -rf ${DF}; \
  ${MPIRUN_SH} -np 2 -x LD_PRELOAD=$<TARGET_FILE:trustep_enospc_shim> -x TRUSTEP_ENOSPC_PATH=step-00000004 \
    -x TRUSTEP_ENOSPC_BYTES=1000 ${TRAIN_CLI} train ${SMALL} --steps 4 --checkpoint-every 2 --out ${DF}; \
  echo exit=$?; set -e; \
  test \"$(cat ${DF}/checkpoints/latest)\" = step-00000002; ! ls -a ${DF}/checkpoints | grep -q tmp; \
  ${TRAIN_CLI} inspect --backend self --checkpoint ${DF}/checkpoints | head -3; \
  ${MPIRUN_SH} -np 2 ${TRAIN_CLI} train ${SMALL} --steps 4 --checkpoint-every 2 --out ${DF} --resume auto")
set_tests_properties(train.disk_full_keeps_the_previous_checkpoint PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}"
  TIMEOUT 180 PROCESSORS 2 PASS_REGULAR_EXPRESSION
  "save_checkpoint: step 4 to .*No space left on device.*unchanged .raised on every rank.*save_checkpoint: step 4 to .*No space left on device.*unchanged .raised on every rank.*exit=1.*step 2 .written by 2 ranks.*train: 2 steps in")

# A rank dies mid-run (SIGKILL): mpirun ends the job inside the watchdog limit. A rank hangs
# (SIGSTOP): its peer's watchdog explains and aborts after --comm-timeout. Either way no process
# is left.
set(LONG_RUN ${TRAIN_CLI} train ${SMALL_ARGS} --steps 100000 --comm-timeout 10)
add_test(NAME train.killed_rank_ends_the_job COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/kill_rank.sh KILL 10
  ${FAULT_DIR}/killed -- ${MPIRUN} -np 2 ${LONG_RUN} --out ${FAULT_DIR}/killed)
add_test(NAME train.hung_rank_is_aborted_by_the_watchdog COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/kill_rank.sh STOP 30
  ${FAULT_DIR}/hung -- ${MPIRUN} -np 2 ${LONG_RUN} --out ${FAULT_DIR}/hung)
set_tests_properties(train.killed_rank_ends_the_job PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}" TIMEOUT 120
  PROCESSORS 2 PASS_REGULAR_EXPRESSION "job ended [0-9.]+ s after SIGKILL with exit [1-9][0-9]*; no process left")
set_tests_properties(train.hung_rank_is_aborted_by_the_watchdog PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}" TIMEOUT 120
  PROCESSORS 2 PASS_REGULAR_EXPRESSION
  "watchdog: rank 0: .* has not finished after 10 s.*job ended [0-9.]+ s after SIGSTOP with exit 124; no process left")

# Soak: 2,000 steps of the tiny preset on 2 ranks (about 2.5 min here), RSS of every rank sampled
# twice a second; after warm-up (200 steps) no rank may grow by more than 24 MiB.
add_test(NAME soak.tiny_2000_steps_memory_flat COMMAND ${TRUSTEP_PYTHON} ${PROJECT_SOURCE_DIR}/scripts/soak.py
  --out ${FAULT_DIR}/soak --trustep $<TARGET_FILE:trustep_cli>)
set_tests_properties(soak.tiny_2000_steps_memory_flat PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}" TIMEOUT 900
  PROCESSORS 2 PASS_REGULAR_EXPRESSION "2000 steps in [0-9]+ s, [0-9]+ samples; memory flat after warm-up")
