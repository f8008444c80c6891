# `--trace`, `bench train` and the scaling pipeline end to end under real mpirun (include()d
# from tests/CMakeLists.txt after plots.cmake and train.cmake: uses TRUSTEP_PYTHON, SMALL_ARGS).
set(BENCH_DIR ${CMAKE_CURRENT_BINARY_DIR}/bench)
set(TRACE_CHECKS ${TRUSTEP_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/trace_checks.py)
file(MAKE_DIRECTORY ${BENCH_DIR})

# train --trace: the last --trace-steps steps, every rank, every MoE phase.
add_test(NAME bench.train_trace_has_every_rank_and_phase COMMAND sh -c "\
  set -e; rm -rf ${BENCH_DIR}/trace-run; \
  ${MPIRUN_SH} -np 2 ${TRAIN_CLI} train ${SMALL} --steps 5 --out ${BENCH_DIR}/trace-run \
    --trace ${BENCH_DIR}/train-trace.json --trace-steps 2; \
  ${TRACE_CHECKS} trace ${BENCH_DIR}/train-trace.json 2 3,4")
set_tests_properties(bench.train_trace_has_every_rank_and_phase PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}"
  TIMEOUT 120 PROCESSORS 2 PASS_REGULAR_EXPRESSION "trace-checks-passed")

# bench train on 2 ranks: per-phase record, ratios against the bare exchanges, and its trace.
add_test(NAME bench.train_json_and_trace COMMAND sh -c "\
  set -e; \
  ${MPIRUN_SH} -np 2 ${TRAIN_CLI} bench train ${SMALL} --iters 2 --warmup-iters 1 \
    --json ${BENCH_DIR}/train.json --trace ${BENCH_DIR}/bench-trace.json; \
  ${TRACE_CHECKS} train-json ${BENCH_DIR}/train.json 2; \
  ${TRACE_CHECKS} trace ${BENCH_DIR}/bench-trace.json 2 1,2")
set_tests_properties(bench.train_json_and_trace PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}"
  TIMEOUT 120 PROCESSORS 2 PASS_REGULAR_EXPRESSION "bench train: world 2.*trace-checks-passed.*trace-checks-passed")
cli_test(bench_train_bad_option --exit 2 --lines 2 --match "invalid value '0' for option '--iters'"
  -- ${MPIRUN} -np 2 ${TRAIN_CLI} bench train --iters 0)
cli_test(bench_train_reads_the_train_section --exit 0 --match "2 layers, H 128, F 256, E 8 .top-2., mode blend"
  -- ${TRAIN_CLI} bench train --backend self --config ${PROJECT_SOURCE_DIR}/configs/tiny.ini --batch 1 --iters 1
     --warmup-iters 0)

# launch/scaling.sh --quick on 1 and 2 ranks: every benchmark, the CSV, the plots and the model.
add_test(NAME bench.scaling_quick_end_to_end COMMAND sh -c "\
  set -e; rm -rf ${BENCH_DIR}/scaling; \
  TRUSTEP_BIN=${TRAIN_CLI} ${PROJECT_SOURCE_DIR}/launch/scaling.sh --quick --ranks 1,2 --no-qwen \
    --out ${BENCH_DIR}/scaling > ${BENCH_DIR}/scaling.out 2>&1 || { tail -40 ${BENCH_DIR}/scaling.out; exit 1; }; \
  for f in scaling.csv scaling.json tables.md model.md scaling_curves.png comm_bandwidth.png select_throughput.png \
    layer_breakdown.png model_scaling.png train-trace-np2.json; do test -s ${BENCH_DIR}/scaling/$f; done; \
  grep -c '^layer,weak,' ${BENCH_DIR}/scaling/scaling.csv; tail -1 ${BENCH_DIR}/scaling.out")
set_tests_properties(bench.scaling_quick_end_to_end PROPERTIES ENVIRONMENT "${MPI_TEST_ENV}"
  TIMEOUT 600 PROCESSORS 2 PASS_REGULAR_EXPRESSION "^2\nscaling.sh: done in")
