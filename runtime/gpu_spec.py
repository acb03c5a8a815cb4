"""The GPU `netc bench --static` models (NVIDIA H200 SXM, sm_90) -> its constants, each with its source.

Every number the static estimate uses lives here, so a calibration after a
real GPU run changes one file. Peaks are dense (no structured sparsity).
"""

from __future__ import annotations

NAME = "NVIDIA H200 SXM (sm_90)"
CAPABILITY = 90  # compute capability 9.0: triton's GPUTarget("cuda", 90, 32)
WARP_SIZE = 32

# NVIDIA H200 Tensor Core GPU datasheet (2024): 141 GB HBM3e at 4.8 TB/s; FP64 34 TFLOPS,
# FP64 Tensor Core 67 TFLOPS, FP32 67 TFLOPS, TF32 Tensor Core 989 TFLOPS *with sparsity*
# (dense: half), BF16/FP16 Tensor Core 1,979 TFLOPS with sparsity (dense: half).
HBM_BYTES_PER_S = 4.8e12
FP32_FLOPS = 67e12  # CUDA cores (FFMA): 132 SMs x 128 lanes x 2 x 1.98 GHz
FP64_FLOPS = 34e12  # CUDA cores (DFMA)
FP64_TENSOR_FLOPS = 67e12  # DMMA
TF32_TENSOR_FLOPS = 989e12 / 2  # HMMA/HGMMA on tf32 inputs, dense
FP16_TENSOR_FLOPS = 1979e12 / 2  # HMMA/HGMMA on fp16/bf16 inputs, dense

# NVIDIA Hopper architecture whitepaper / H100 SXM5 (the H200 is the same GH100 configuration):
# 132 SMs; CUDA C++ Programming Guide, "Compute capabilities" table, 9.0:
SM_COUNT = 132
SHARED_PER_SM = 228 * 1024  # bytes of shared memory per SM
SHARED_PER_BLOCK = 227 * 1024  # the most one CTA may use
SHARED_RESERVED_PER_BLOCK = 1024  # the system's 1 KB per resident CTA
REGISTERS_PER_SM = 65536  # 32-bit registers
REGISTER_ALLOCATION_UNIT = 256  # registers, allocated per warp
MAX_THREADS_PER_SM = 2048
MAX_BLOCKS_PER_SM = 32

# Assumptions of the time model (not datasheet numbers; the first GPU run calibrates them):
# a kernel launch, replayed in a CUDA graph, costs about 2 us of GPU time before any work
# (launch latency, CTA ramp-up and drain) -- roughly what small kernels measure on Hopper.
LAUNCH_OVERHEAD_US = 2.0
# warps an SM needs resident to hide arithmetic and memory latency (4 per scheduler); with
# fewer, its throughput is taken as proportionally lower.
LATENCY_HIDING_WARPS = 16
