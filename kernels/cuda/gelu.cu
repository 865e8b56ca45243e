/* gelu.cu: GELU, tanh approximation (as GPT-2), forward and backward.
 *
 *   forward:  y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *   backward: dx += dy * (0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx),
 *             du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2);
 *             and in place, dx = dx * that (dx holding dy: the fallback of
 *             matmul_gelu_backward, whose bf16 path is cuBLASLt's DGELU)
 *
 * Elementwise and memory-bound: 16-byte loads and stores, math in fp32
 * whatever the storage type (ew_kernel in cuda_backend.h). */
#include "cuda_backend.h"

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

struct gelu_fwd_op {
	static const int nin = 1;
	static const bool reads_out = false;
	static __device__ __forceinline__ float apply(float, float x, float)
	{
		float u = GELU_K * (x + GELU_A * x * x * x);
		return 0.5f * x * (1.0f + tanhf(u));
	}
};

static __device__ __forceinline__ float gelu_grad(float x)
{
	float x2 = x * x, t = tanhf(GELU_K * (x + GELU_A * x2 * x));
	float du = GELU_K * (1.0f + 3.0f * GELU_A * x2);
	return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

struct gelu_bwd_op {	/* a = x, b = dy */
	static const int nin = 2;
	static const bool reads_out = true;
	static __device__ __forceinline__ float apply(float dx, float x, float dy)
	{
		return dx + dy * gelu_grad(x);
	}
};

struct gelu_bwd_scale_op {	/* out = dy in, dx out; a = x */
	static const int nin = 1;
	static const bool reads_out = true;
	static __device__ __forceinline__ float apply(float dy, float x, float) { return dy * gelu_grad(x); }
};

void cuda_gelu_forward(backend *be, void *out, const void *inp, size_t N)
{
	NVTX_RANGE("gelu_forward");
	ew_launch<gelu_fwd_op>(be, out, inp, NULL, N);
}

void cuda_gelu_backward(backend *be, void *dinp, const void *inp, const void *dout, size_t N)
{
	NVTX_RANGE("gelu_backward");
	ew_launch<gelu_bwd_op>(be, dinp, inp, dout, N);
}

void cuda_gelu_backward_scale(backend *be, void *dinp, const void *inp, size_t N)
{
	NVTX_RANGE("gelu_backward_scale");
	ew_launch<gelu_bwd_scale_op>(be, dinp, inp, NULL, N);
}
