// Standalone launchers of the dispatch kernel's fp8 quantizer (kernels/internal/fp8_quant.cuh):
// the GPU tests compare them with the host reference (common/fp8.h), and a frontend or the
// bench can pre-quantize its tokens with exactly the daemon's rule.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace epd::kernels {

// out[i] = e4m3 code of in[i] (NaN -> 0x7F, clamped to +-448, round to nearest even).
cudaError_t LaunchEncodeE4m3(const float* in, uint8_t* out, int64_t count, cudaStream_t stream);

// x [rows, hidden] bf16 (hidden % 128 == 0, x 16-byte aligned) -> q [rows, hidden] e4m3 and
// scales [rows, hidden / 128] (ue8m0 bytes when ue8m0, else fp32).
cudaError_t LaunchQuantizeRowsE4m3(const void* x, int64_t rows, int hidden, bool ue8m0, void* q,
                                   void* scales, cudaStream_t stream);

}  // namespace epd::kernels
