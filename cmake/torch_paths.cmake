# Locate the installed torch without find_package(Torch): its legacy CUDA detection fails on
# machines with a CUDA torch but no full toolkit layout. The stable ABI needs only torch's
# headers and its libtorch/libtorch_cpu/libc10 (+ libtorch_cuda when building CUDA kernels).
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__); print(torch.version.cuda or '')"
  OUTPUT_VARIABLE _torch_out
  RESULT_VARIABLE _torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "unlearnx: cannot import torch with ${Python_EXECUTABLE}. Install torch first "
                      "(pip install torch==...) and build with --no-build-isolation.")
endif()
string(REPLACE "\n" ";" _torch_out "${_torch_out}")
list(GET _torch_out 0 TORCH_DIR)
list(GET _torch_out 1 TORCH_VERSION_STRING)
list(LENGTH _torch_out _n)
set(TORCH_CUDA_VERSION "")
if(_n GREATER 2)
  list(GET _torch_out 2 TORCH_CUDA_VERSION)
endif()
set(TORCH_INCLUDE_DIR "${TORCH_DIR}/include")
set(TORCH_LIB_DIR "${TORCH_DIR}/lib")
message(STATUS "unlearnx: torch ${TORCH_VERSION_STRING} at ${TORCH_DIR} (CUDA: '${TORCH_CUDA_VERSION}')")
