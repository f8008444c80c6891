# Locates LibTorch from the pinned `torch` wheel in the project's virtual environment
# (scripts/setup.sh installs it) and defines imported targets:
#   trustep::torch       ATen/c10/torch CPU libraries and headers
#   trustep::torch_cuda  libtorch_cuda + libc10_cuda (only when TRUSTEP_TORCH_HAS_CUDA)
#
# Why not find_package(Torch)? The wheel's Caffe2Config requires a matching CUDA toolkit
# (and fails without one), and its include dir carries a bundled fmt that would shadow
# Debian's fmt/spdlog. We export every torch include directory except fmt.
#
# Override the location with -DTRUSTEP_TORCH_DIR=/path/to/site-packages/torch.

set(TRUSTEP_TORCH_DIR "" CACHE PATH "torch package directory (site-packages/torch); empty = project .venv")
if(NOT TRUSTEP_TORCH_DIR)
  file(GLOB _torch_candidates "${PROJECT_SOURCE_DIR}/.venv/lib/python3*/site-packages/torch")
  list(LENGTH _torch_candidates _n)
  if(_n EQUAL 0)
    message(FATAL_ERROR "trustep: LibTorch not found in ${PROJECT_SOURCE_DIR}/.venv. "
                        "Run scripts/setup.sh first, or pass -DTRUSTEP_TORCH_DIR=<site-packages/torch>.")
  endif()
  list(GET _torch_candidates 0 _torch_dir)
  set(TRUSTEP_TORCH_DIR "${_torch_dir}" CACHE PATH "torch package directory" FORCE)
endif()

set(_torch_lib "${TRUSTEP_TORCH_DIR}/lib")
foreach(_lib torch torch_cpu c10)
  if(NOT EXISTS "${_torch_lib}/lib${_lib}.so")
    message(FATAL_ERROR "trustep: ${_torch_lib}/lib${_lib}.so missing: is ${TRUSTEP_TORCH_DIR} a torch wheel?")
  endif()
endforeach()

file(GLOB _ver_file "${TRUSTEP_TORCH_DIR}/version.py")
set(TRUSTEP_TORCH_VERSION "unknown")
if(_ver_file)
  file(STRINGS "${_ver_file}" _ver_line REGEX "^__version__")
  string(REGEX REPLACE ".*['\"]([^'\"]+)['\"].*" "\\1" TRUSTEP_TORCH_VERSION "${_ver_line}")
endif()

# Mirror torch/include without fmt/ (symlinks), so <fmt/...> resolves to Debian's fmt.
set(_shim "${CMAKE_BINARY_DIR}/torch-include")
file(MAKE_DIRECTORY "${_shim}")
file(GLOB _entries RELATIVE "${TRUSTEP_TORCH_DIR}/include" "${TRUSTEP_TORCH_DIR}/include/*")
foreach(_e IN LISTS _entries)
  if(NOT _e STREQUAL "fmt" AND NOT EXISTS "${_shim}/${_e}")
    file(CREATE_LINK "${TRUSTEP_TORCH_DIR}/include/${_e}" "${_shim}/${_e}" SYMBOLIC)
  endif()
endforeach()

add_library(trustep::torch INTERFACE IMPORTED)
set_target_properties(trustep::torch PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${_shim};${_shim}/torch/csrc/api/include"
  INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${_shim};${_shim}/torch/csrc/api/include"
  INTERFACE_COMPILE_DEFINITIONS "_GLIBCXX_USE_CXX11_ABI=1"
  # at::parallel_for runs its body on OpenMP threads only in code compiled with -fopenmp
  # (ATen's ParallelOpenMP.h); the runtime is torch's own libgomp, linked below.
  INTERFACE_COMPILE_OPTIONS "$<$<COMPILE_LANGUAGE:CXX>:-fopenmp>"
  # --no-as-needed: libtorch registers CPU kernels in static initialisers.
  INTERFACE_LINK_LIBRARIES "-Wl,--no-as-needed,${_torch_lib}/libtorch_cpu.so,${_torch_lib}/libtorch.so,${_torch_lib}/libc10.so,--as-needed;${_torch_lib}/libgomp.so.1"
  INTERFACE_LINK_OPTIONS "-Wl,-rpath,${_torch_lib}")

set(TRUSTEP_TORCH_HAS_CUDA OFF)
if(EXISTS "${_torch_lib}/libtorch_cuda.so")
  set(TRUSTEP_TORCH_HAS_CUDA ON)
  add_library(trustep::torch_cuda INTERFACE IMPORTED)
  set_target_properties(trustep::torch_cuda PROPERTIES
    INTERFACE_LINK_LIBRARIES "-Wl,--no-as-needed,${_torch_lib}/libtorch_cuda.so,${_torch_lib}/libc10_cuda.so,--as-needed;trustep::torch")
endif()

# NCCL: prefer the one the torch wheel ships (the library torch itself loads), else the toolkit's.
find_path(TRUSTEP_NCCL_INCLUDE_DIR nccl.h
  HINTS "${TRUSTEP_TORCH_DIR}/../nvidia/nccl/include" ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
find_library(TRUSTEP_NCCL_LIBRARY NAMES libnccl.so.2 nccl NAMES_PER_DIR
  HINTS "${TRUSTEP_TORCH_DIR}/../nvidia/nccl/lib" ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
