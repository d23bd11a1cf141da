# Warnings for the project's own C++ (not for CUDA device code, where torch headers are noisy).
set(UNLEARNX_WARNINGS -Wall -Wextra -Wno-unused-parameter)
