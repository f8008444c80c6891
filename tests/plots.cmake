# Plot scripts on a sample metrics.jsonl (include()d from tests/CMakeLists.txt).
# TRUSTEP_PYTHON: the interpreter with matplotlib; default the project's .venv (scripts/setup.sh).
if(NOT TRUSTEP_PYTHON)
  set(TRUSTEP_PYTHON ${PROJECT_SOURCE_DIR}/.venv/bin/python)
endif()
set(PLOT_SAMPLE ${CMAKE_CURRENT_SOURCE_DIR}/data/metrics_sample.jsonl)
add_test(NAME plots.train COMMAND ${TRUSTEP_PYTHON} ${PROJECT_SOURCE_DIR}/scripts/plot_train.py ${PLOT_SAMPLE}
  --out ${CMAKE_CURRENT_BINARY_DIR}/plots)
set_tests_properties(plots.train PROPERTIES TIMEOUT 120
  PASS_REGULAR_EXPRESSION "wrote loss.png, trust_heatmap.png, expert_load.png")
add_test(NAME plots.poison COMMAND ${TRUSTEP_PYTHON} ${PROJECT_SOURCE_DIR}/scripts/plot_poison.py
  --out ${CMAKE_CURRENT_BINARY_DIR}/plots/poison.png --poison-from 10 blend=${PLOT_SAMPLE} again=${PLOT_SAMPLE})
set_tests_properties(plots.poison PROPERTIES TIMEOUT 120 PASS_REGULAR_EXPRESSION "wrote .*poison.png")
add_test(NAME plots.missing_file COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect.sh --exit 2
  --match "plot_train.py: error: no such file: /no/such/metrics.jsonl"
  -- ${TRUSTEP_PYTHON} ${PROJECT_SOURCE_DIR}/scripts/plot_train.py /no/such/metrics.jsonl)
