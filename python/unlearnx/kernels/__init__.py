"""unlearnx.kernels"""
