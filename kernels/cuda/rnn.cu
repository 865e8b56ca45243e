/* rnn.cu: the recurrent op (ops.h, "recurrent ops") on CUDA, through cuDNN's
 * RNN API: one Elman (CUDNN_RNN_TANH) or LSTM (CUDNN_LSTM) layer per call,
 * cudnnRNNForward, cudnnRNNBackwardData_v8, cudnnRNNBackwardWeights_v8.
 *
 * Our parameters stay in PyTorch's layout inside the model's one buffer
 * (W_ih [G*H,D], W_hh [G*H,H], b_ih, b_hh [G*H], gates i f g o), so a
 * checkpoint means the same on every backend. cuDNN wants its own packed
 * weight space: each call copies our matrices and biases into it (in fp32)
 * at the addresses cudnnGetRNNWeightParams gives for each gate (linLayerID 0..G-1
 * input, G..2G-1 recurrent, whose biases are b_ih and b_hh: CUDNN_RNN_DOUBLE_BIAS),
 * and backward adds cuDNN's weight gradients back into ours. The copies are
 * O(parameters) per call, small beside the O(B*T*H^2) recurrence.
 *
 * cuDNN runs in fp32 (it has no bf16 RNN): with bf16 activations the inputs
 * are converted into fp32 staging buffers and the outputs back. Staging is
 * time-major ([T,B,C]: CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED, which with B
 * sequences of equal length is exactly that, and needs no padded-I/O mode),
 * so that a run of steps [t0, t1) is one contiguous piece.
 *
 * Resets (a document starts at step t of row b: the state entering t is zero
 * and no gradient crosses it): cuDNN has no such input, so the T steps are cut
 * into segments at every step where any row resets; each segment is one
 * cudnnRNNForward from the previous segment's final state with the reset rows
 * zeroed, and backward walks the segments in reverse, passing each segment's
 * dhx (reset rows zeroed) to the previous one as dhy. Segments are found from
 * the host copy of the reset mask that upload kept (cuda_shadow_find).
 *
 * work (rnn_work_bytes) holds, per layer, everything from forward that
 * backward needs: the fp32 x and y, the state entering every segment, the
 * weight space, and cuDNN's reserve space per segment (bounded by T segments
 * of one step); plus backward's fp32 scratch.
 *
 * Emulated build (ANATOMY_EMU): there is no cuDNN, and device memory is host
 * memory, so the same entry points stage in fp32 with the same kernels and
 * serve the recurrence from the CPU backend's op (kernels/cpu/ops_rnn.c),
 * batch-major. The whole CUDA code path of a recurrent model, conversions and
 * model code included, thus runs in CI; only cuDNN itself needs a GPU (the
 * parity of this file against the CPU op on a lent GPU is `make gpu-check`'s). */
#include "cuda_backend.h"

#include <stdlib.h>
#include <string.h>

#ifndef ANATOMY_EMU
#include <cudnn.h>
#endif

#define RNN_THREADS 256
#define RNN_ALIGN 256

static size_t align_up(size_t n) { return (n + RNN_ALIGN - 1) / RNN_ALIGN * RNN_ALIGN; }

static int gates_of(int cell) { return cell == RNN_CELL_LSTM ? 4 : 1; }

/* ---- conversion kernels --------------------------------------------------
 * rows of C elements indexed (b, t) in [B,T,C] act buffers; the fp32 side is
 * [T,B,C] when tm (time-major, cuDNN's staging), else [B,T,C]. */

template <class T>
__global__ void rnn_in_kernel(float *dst, const T *src, int B, int Tn, int C, int tm)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x, n = (size_t)B * Tn * C;
	if (i >= n)
		return;
	size_t c = i % C, r = i / C;
	size_t b = r / Tn, t = r % Tn;
	size_t o = tm ? (t * B + b) * C + c : i;
	dst[o] = to_f(src[i]);
}

/* dst = src (add 0) or dst += src (add 1), back from the fp32 layout. */
template <class T>
__global__ void rnn_out_kernel(T *dst, const float *src, int B, int Tn, int C, int tm, int add)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x, n = (size_t)B * Tn * C;
	if (i >= n)
		return;
	size_t c = i % C, r = i / C;
	size_t b = r / Tn, t = r % Tn;
	size_t s = tm ? (t * B + b) * C + c : i;
	float v = src[s];
	if (add)
		v += to_f(dst[i]);
	dst[i] = from_f<T>(v);
}

static void to_f32(backend *be, float *dst, const void *src, int B, int Tn, int C, int tm)
{
	cuda_backend *cb = cuda_of(be);
	size_t n = (size_t)B * Tn * C;
	if (!n)
		return;
	if (!src) {
		CUDA_CHECK(cudaMemsetAsync(dst, 0, n * sizeof(float), cb->stream));
		return;
	}
	if (be->act == DT_BF16)
		CUDA_LAUNCH(cdiv(n, RNN_THREADS), RNN_THREADS, 0, cb->stream, rnn_in_kernel<__nv_bfloat16>)(
			dst, (const __nv_bfloat16 *)src, B, Tn, C, tm);
	else
		CUDA_LAUNCH(cdiv(n, RNN_THREADS), RNN_THREADS, 0, cb->stream, rnn_in_kernel<float>)(
			dst, (const float *)src, B, Tn, C, tm);
	LAUNCH_CHECK();
}

static void from_f32(backend *be, void *dst, const float *src, int B, int Tn, int C, int tm, int add)
{
	cuda_backend *cb = cuda_of(be);
	size_t n = (size_t)B * Tn * C;
	if (!n || !dst)
		return;
	if (be->act == DT_BF16)
		CUDA_LAUNCH(cdiv(n, RNN_THREADS), RNN_THREADS, 0, cb->stream, rnn_out_kernel<__nv_bfloat16>)(
			(__nv_bfloat16 *)dst, src, B, Tn, C, tm, add);
	else
		CUDA_LAUNCH(cdiv(n, RNN_THREADS), RNN_THREADS, 0, cb->stream, rnn_out_kernel<float>)(
			(float *)dst, src, B, Tn, C, tm, add);
	LAUNCH_CHECK();
}

#ifdef ANATOMY_EMU

/* ---- emulated: the CPU backend's op on fp32 staging ---------------------- */

typedef struct {
	size_t x, y, dx, dy, st[8], w[4], dw[4], cpu, total;
} emu_layout;

enum { ST_H0, ST_C0, ST_HT, ST_CT, ST_DH0, ST_DC0, ST_DHT, ST_DCT };

static backend *emu_cpu(void)
{
	static backend *cpu;
	if (!cpu) {
		char err[256] = "";
		cpu = backend_cpu_create(0, err);
		if (!cpu)
			cuda_die(__FILE__, __LINE__, "rnn: the emulated cuDNN needs the CPU backend: %s", err);
	}
	return cpu;
}

static emu_layout emu_layout_of(int cell, int B, int T, int D, int H)
{
	size_t G = (size_t)gates_of(cell), BT = (size_t)B * T, BH = (size_t)B * H, f = sizeof(float);
	size_t wn[4] = { G * H * D, G * H * H, G * H, G * H };
	emu_layout l;
	size_t o = 0;
	l.x = o, o += align_up(BT * D * f);
	l.y = o, o += align_up(BT * H * f);
	l.dx = o, o += align_up(BT * D * f);
	l.dy = o, o += align_up(BT * H * f);
	for (int k = 0; k < 8; k++)
		l.st[k] = o, o += align_up(BH * f);
	for (int k = 0; k < 4; k++)
		l.w[k] = o, o += align_up(wn[k] * f);
	for (int k = 0; k < 4; k++)
		l.dw[k] = o, o += align_up(wn[k] * f);
	backend *cpu = emu_cpu();
	l.cpu = o, o += align_up(cpu->rnn_work_bytes(cpu, cell, B, T, D, H));
	l.total = o;
	return l;
}

static size_t cuda_rnn_work_bytes(backend *be, int cell, int B, int T, int D, int H)
{
	(void)be;
	return emu_layout_of(cell, B, T, D, H).total;
}

#define AT(off) ((float *)((char *)work + (off)))

static void cuda_rnn_forward(backend *be, int cell, void *y, void *hT, void *cT, void *work,
			     const void *x, const void *h0, const void *c0, const int32_t *reset,
			     const void *w_ih, const void *w_hh, const void *b_ih, const void *b_hh,
			     int B, int T, int D, int H)
{
	NVTX_RANGE("rnn_forward");
	emu_layout l = emu_layout_of(cell, B, T, D, H);
	int G = gates_of(cell), lstm = cell == RNN_CELL_LSTM;
	const void *w[4] = { w_ih, w_hh, b_ih, b_hh };
	int wn[4] = { G * H * D, G * H * H, G * H, G * H };
	to_f32(be, AT(l.x), x, B, T, D, 0);
	to_f32(be, AT(l.st[ST_H0]), h0, 1, 1, B * H, 0);
	to_f32(be, AT(l.st[ST_C0]), lstm ? c0 : NULL, 1, 1, B * H, 0);
	for (int k = 0; k < 4; k++)
		to_f32(be, AT(l.w[k]), w[k], 1, 1, wn[k], 0);
	CUDA_CHECK(cudaStreamSynchronize(cuda_of(be)->stream));
	backend *cpu = emu_cpu();
	cpu->rnn_forward(cpu, cell, AT(l.y), AT(l.st[ST_HT]), lstm ? AT(l.st[ST_CT]) : NULL,
			 AT(l.cpu), AT(l.x), AT(l.st[ST_H0]), lstm ? AT(l.st[ST_C0]) : NULL, reset,
			 AT(l.w[0]), AT(l.w[1]), AT(l.w[2]), AT(l.w[3]), B, T, D, H);
	from_f32(be, y, AT(l.y), B, T, H, 0, 0);
	from_f32(be, hT, AT(l.st[ST_HT]), 1, 1, B * H, 0, 0);
	if (lstm)
		from_f32(be, cT, AT(l.st[ST_CT]), 1, 1, B * H, 0, 0);
}

static void cuda_rnn_backward(backend *be, int cell, void *dx, void *dh0, void *dc0, void *dw_ih,
			      void *dw_hh, void *db_ih, void *db_hh, const void *dy, const void *dhT,
			      const void *dcT, const void *work_, const void *x, const void *y,
			      const void *h0, const void *c0, const int32_t *reset,
			      const void *w_ih, const void *w_hh, int B, int T, int D, int H)
{
	NVTX_RANGE("rnn_backward");
	(void)x, (void)y, (void)h0, (void)c0, (void)w_ih, (void)w_hh; /* forward's fp32 copies */
	void *work = (void *)work_; /* backward's part of work is scratch (ops.h) */
	cuda_backend *cb = cuda_of(be);
	emu_layout l = emu_layout_of(cell, B, T, D, H);
	int G = gates_of(cell), lstm = cell == RNN_CELL_LSTM;
	void *dw[4] = { dw_ih, dw_hh, db_ih, db_hh };
	int wn[4] = { G * H * D, G * H * H, G * H, G * H };
	to_f32(be, AT(l.dy), dy, B, T, H, 0);
	to_f32(be, AT(l.st[ST_DHT]), dhT, 1, 1, B * H, 0);
	to_f32(be, AT(l.st[ST_DCT]), lstm ? dcT : NULL, 1, 1, B * H, 0);
	CUDA_CHECK(cudaMemsetAsync(AT(l.dx), 0, (size_t)B * T * D * sizeof(float), cb->stream));
	CUDA_CHECK(cudaMemsetAsync(AT(l.st[ST_DH0]), 0, 2 * align_up((size_t)B * H * sizeof(float)),
				   cb->stream)); /* dh0 and dc0, adjacent */
	for (int k = 0; k < 4; k++)
		CUDA_CHECK(cudaMemsetAsync(AT(l.dw[k]), 0, (size_t)wn[k] * sizeof(float), cb->stream));
	CUDA_CHECK(cudaStreamSynchronize(cb->stream));
	backend *cpu = emu_cpu();
	cpu->rnn_backward(cpu, cell, AT(l.dx), AT(l.st[ST_DH0]), lstm ? AT(l.st[ST_DC0]) : NULL,
			  AT(l.dw[0]), AT(l.dw[1]), AT(l.dw[2]), AT(l.dw[3]), AT(l.dy),
			  AT(l.st[ST_DHT]), lstm ? AT(l.st[ST_DCT]) : NULL, AT(l.cpu), AT(l.x), AT(l.y),
			  AT(l.st[ST_H0]), lstm ? AT(l.st[ST_C0]) : NULL, reset, AT(l.w[0]), AT(l.w[1]),
			  B, T, D, H);
	from_f32(be, dx, AT(l.dx), B, T, D, 0, 1);
	from_f32(be, dh0, AT(l.st[ST_DH0]), 1, 1, B * H, 0, 1);
	if (lstm)
		from_f32(be, dc0, AT(l.st[ST_DC0]), 1, 1, B * H, 0, 1);
	for (int k = 0; k < 4; k++)
		from_f32(be, dw[k], AT(l.dw[k]), 1, 1, wn[k], 0, 1);
}

#undef AT

#else /* native: cuDNN */

/* ---- cuDNN ------------------------------------------------------------- */

#define CUDNN_CHECK(call)                                                                        \
	do {                                                                                     \
		cudnnStatus_t st_ = (call);                                                      \
		if (st_ != CUDNN_STATUS_SUCCESS)                                                 \
			cuda_die(__FILE__, __LINE__, "%s: %s", #call, cudnnGetErrorString(st_)); \
	} while (0)

/* One handle and one (zero) dropout descriptor for the process; the handle
 * is pointed at the calling backend's stream on every call. */
static cudnnHandle_t rnn_h;
static cudnnDropoutDescriptor_t rnn_drop;

static cudnnHandle_t rnn_handle(cuda_backend *cb)
{
	if (!rnn_h) {
		size_t states = 0;
		void *buf = NULL;
		CUDNN_CHECK(cudnnCreate(&rnn_h));
		CUDNN_CHECK(cudnnCreateDropoutDescriptor(&rnn_drop));
		CUDNN_CHECK(cudnnDropoutGetStatesSize(rnn_h, &states));
		CUDA_CHECK(cudaMalloc(&buf, states ? states : 1));
		CUDNN_CHECK(cudnnSetDropoutDescriptor(rnn_drop, rnn_h, 0.0f, buf, states, 0));
	}
	CUDNN_CHECK(cudnnSetStream(rnn_h, cb->stream));
	return rnn_h;
}

/* RNN descriptors by shape, made once each (a training run uses a few). */
#define RNN_NDESC 16
static struct {
	int cell, D, H, math;
	cudnnRNNDescriptor_t d;
} rnn_descs[RNN_NDESC];

static cudnnRNNDescriptor_t rnn_desc(backend *be, int cell, int D, int H)
{
	/* fp32 verification mode: FMA only (no TF32); bf16 mode: tensor cores allowed */
	int math = be->act == DT_F32 ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
	int free_slot = -1;
	for (int i = 0; i < RNN_NDESC; i++) {
		if (rnn_descs[i].d && rnn_descs[i].cell == cell && rnn_descs[i].D == D &&
		    rnn_descs[i].H == H && rnn_descs[i].math == math)
			return rnn_descs[i].d;
		if (!rnn_descs[i].d && free_slot < 0)
			free_slot = i;
	}
	if (free_slot < 0)
		cuda_die(__FILE__, __LINE__, "rnn: more than %d layer shapes", RNN_NDESC);
	cudnnRNNDescriptor_t d;
	CUDNN_CHECK(cudnnCreateRNNDescriptor(&d));
	CUDNN_CHECK(cudnnSetRNNDescriptor_v8(d, CUDNN_RNN_ALGO_STANDARD,
					     cell == RNN_CELL_LSTM ? CUDNN_LSTM : CUDNN_RNN_TANH,
					     CUDNN_RNN_DOUBLE_BIAS, CUDNN_UNIDIRECTIONAL, CUDNN_LINEAR_INPUT,
					     CUDNN_DATA_FLOAT, CUDNN_DATA_FLOAT, (cudnnMathType_t)math, D,
					     H, H, 1, rnn_drop, CUDNN_RNN_PADDED_IO_DISABLED));
	rnn_descs[free_slot].cell = cell;
	rnn_descs[free_slot].D = D;
	rnn_descs[free_slot].H = H;
	rnn_descs[free_slot].math = math;
	rnn_descs[free_slot].d = d;
	return d;
}

/* Descriptors of one call: x and y data (re-set per segment), h/c state. */
typedef struct {
	cudnnHandle_t h;
	cudnnRNNDescriptor_t rnn;
	cudnnRNNDataDescriptor_t xd, yd;
	cudnnTensorDescriptor_t hd;
	int *lens; /* host [B] */
	size_t wsize;
} rnn_call;

static void call_open(rnn_call *c, backend *be, int cell, int B, int D, int H)
{
	c->h = rnn_handle(cuda_of(be));
	c->rnn = rnn_desc(be, cell, D, H);
	CUDNN_CHECK(cudnnCreateRNNDataDescriptor(&c->xd));
	CUDNN_CHECK(cudnnCreateRNNDataDescriptor(&c->yd));
	CUDNN_CHECK(cudnnCreateTensorDescriptor(&c->hd));
	int dims[3] = { 1, B, H }, strides[3] = { B * H, H, 1 };
	CUDNN_CHECK(cudnnSetTensorNdDescriptor(c->hd, CUDNN_DATA_FLOAT, 3, dims, strides));
	CUDNN_CHECK(cudnnGetRNNWeightSpaceSize(c->h, c->rnn, &c->wsize));
	c->lens = (int *)malloc((size_t)B * sizeof(int));
	if (!c->lens)
		cuda_die(__FILE__, __LINE__, "rnn: out of host memory");
}

/* Points the data descriptors at a segment of len steps. */
static void call_segment(rnn_call *c, int B, int D, int H, int len)
{
	for (int b = 0; b < B; b++)
		c->lens[b] = len;
	CUDNN_CHECK(cudnnSetRNNDataDescriptor(c->xd, CUDNN_DATA_FLOAT, CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED,
					      len, B, D, c->lens, NULL));
	CUDNN_CHECK(cudnnSetRNNDataDescriptor(c->yd, CUDNN_DATA_FLOAT, CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED,
					      len, B, H, c->lens, NULL));
}

static void call_close(rnn_call *c)
{
	cudnnDestroyRNNDataDescriptor(c->xd);
	cudnnDestroyRNNDataDescriptor(c->yd);
	cudnnDestroyTensorDescriptor(c->hd);
	free(c->lens);
}

/* Reserve and work space for a segment of len steps. */
static void seg_sizes(rnn_call *c, int B, int D, int H, int len, size_t *ws, size_t *rs)
{
	call_segment(c, B, D, H, len);
	CUDNN_CHECK(cudnnGetRNNTempSpaceSizes(c->h, c->rnn, CUDNN_FWD_MODE_TRAINING, c->xd, ws, rs));
}

/* work, in this order (each piece 256-byte aligned). */
typedef struct {
	size_t x, y, dx, dy;       /* fp32 [T,B,D|H] */
	size_t hseg, cseg;         /* fp32 [T,B,H]: the state entering the segment starting at t */
	size_t hy, cy;             /* fp32 [B,H]: a segment's final state */
	size_t dh[2], dc[2];       /* fp32 [B,H]: backward's state gradients, ping-pong */
	size_t lens;               /* int32 [T,B]: lens[l][b] = l + 1, for devSeqLengths */
	size_t w, dw, wsize;       /* cuDNN weight space and its gradient */
	size_t ws, ws_bytes;       /* cuDNN work space */
	size_t rs, rs_bytes;       /* cuDNN reserve space of all segments */
	size_t total;
} dnn_layout;

static dnn_layout dnn_layout_of(rnn_call *c, int B, int T, int D, int H)
{
	size_t f = sizeof(float), BT = (size_t)B * T, BH = (size_t)B * H;
	dnn_layout l;
	size_t o = 0, ws1, rs1, wsT, rsT;
	l.x = o, o += align_up(BT * D * f);
	l.y = o, o += align_up(BT * H * f);
	l.dx = o, o += align_up(BT * D * f);
	l.dy = o, o += align_up(BT * H * f);
	l.hseg = o, o += align_up(BT * H * f);
	l.cseg = o, o += align_up(BT * H * f);
	l.hy = o, o += align_up(BH * f);
	l.cy = o, o += align_up(BH * f);
	for (int k = 0; k < 2; k++) {
		l.dh[k] = o, o += align_up(BH * f);
		l.dc[k] = o, o += align_up(BH * f);
	}
	l.lens = o, o += align_up(BT * sizeof(int32_t));
	l.wsize = c->wsize;
	l.w = o, o += align_up(c->wsize);
	l.dw = o, o += align_up(c->wsize);
	seg_sizes(c, B, D, H, 1, &ws1, &rs1);
	seg_sizes(c, B, D, H, T, &wsT, &rsT);
	/* segments of n steps each need about reserve(1) * n or less: T segments
	 * of one step bound any cut, and the whole T bounds none at all */
	l.ws_bytes = ws1 > wsT ? ws1 : wsT;
	l.rs_bytes = (size_t)T * align_up(rs1);
	if (align_up(rsT) > l.rs_bytes)
		l.rs_bytes = align_up(rsT);
	l.ws = o, o += align_up(l.ws_bytes);
	l.rs = o, o += l.rs_bytes;
	l.total = o;
	return l;
}

static size_t cuda_rnn_work_bytes(backend *be, int cell, int B, int T, int D, int H)
{
	rnn_call c;
	call_open(&c, be, cell, B, D, H);
	size_t n = dnn_layout_of(&c, B, T, D, H).total;
	call_close(&c);
	return n;
}

/* dst[b,:] = src[b,:], or 0 where row b resets at step t (or src is NULL). */
__global__ void rnn_enter_kernel(float *dst, const float *src, const int32_t *reset, int t, int T,
				 int B, int H)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= (size_t)B * H)
		return;
	size_t b = i / H;
	int zero = !src || (reset && reset[b * T + t]);
	dst[i] = zero ? 0.0f : src[i];
}

__global__ void rnn_lens_kernel(int32_t *lens, int T, int B)
{
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i < (size_t)T * B)
		lens[i] = (int32_t)(i / B) + 1;
}

static void enter(cuda_backend *cb, float *dst, const float *src, const int32_t *reset, int t, int T,
		  int B, int H)
{
	CUDA_LAUNCH(cdiv((size_t)B * H, RNN_THREADS), RNN_THREADS, 0, cb->stream, rnn_enter_kernel)(
		dst, src, reset, t, T, B, H);
	LAUNCH_CHECK();
}

/* Segment starts: 0 and every step where some row resets; returns the count
 * (starts[n] = T). Reads the host copy of the mask. */
static int segments_of(cuda_backend *cb, const int32_t *reset, int B, int T, int *starts)
{
	int n = 0;
	starts[n++] = 0;
	if (reset) {
		const int32_t *hr = cuda_shadow_find(cb, reset, (size_t)B * T);
		static int32_t *copy;
		static size_t cap;
		if (!hr) { /* not uploaded through the backend: read it (synchronises) */
			if ((size_t)B * T > cap) {
				free(copy);
				copy = (int32_t *)malloc((size_t)B * T * sizeof *copy);
				cap = copy ? (size_t)B * T : 0;
				if (!copy)
					cuda_die(__FILE__, __LINE__, "rnn: out of host memory");
			}
			CUDA_CHECK(cudaMemcpyAsync(copy, reset, (size_t)B * T * sizeof *copy,
						   cudaMemcpyDeviceToHost, cb->stream));
			CUDA_CHECK(cudaStreamSynchronize(cb->stream));
			hr = copy;
		}
		for (int t = 1; t < T; t++)
			for (int b = 0; b < B; b++)
				if (hr[(size_t)b * T + t]) {
					starts[n++] = t;
					break;
				}
	}
	starts[n] = T;
	return n;
}

/* Our weights <-> cuDNN's weight space: for each gate's input and recurrent
 * matrix and bias, its address there. to_space: copy ours in (fp32);
 * otherwise add the space's values (gradients) into ours. */
static void weights_xfer(backend *be, rnn_call *c, float *space, int cell, int D, int H, void *w_ih,
			 void *w_hh, void *b_ih, void *b_hh, int to_space)
{
	int G = gates_of(cell);
	dtype t = be->act;
	cudnnTensorDescriptor_t md, bd;
	CUDNN_CHECK(cudnnCreateTensorDescriptor(&md));
	CUDNN_CHECK(cudnnCreateTensorDescriptor(&bd));
	for (int id = 0; id < 2 * G; id++) {
		int rec = id >= G, g = id % G, cols = rec ? H : D;
		void *maddr = NULL, *baddr = NULL;
		CUDNN_CHECK(cudnnGetRNNWeightParams(c->h, c->rnn, 0, c->wsize, space, id, md, &maddr, bd,
						    &baddr));
		/* the copies below assume an [H, cols] row-major matrix, PyTorch's layout
		 * of one gate's rows (PyTorch hands cuDNN its tensors the same way) */
		cudnnDataType_t dt;
		int nd = 0, dims[8], strides[8];
		CUDNN_CHECK(cudnnGetTensorNdDescriptor(md, 8, &dt, &nd, dims, strides));
		if (nd < 2 || dims[nd - 2] != H || dims[nd - 1] != cols || strides[nd - 1] != 1 ||
		    strides[nd - 2] != cols)
			cuda_die(__FILE__, __LINE__, "rnn: cuDNN's matrix %d is not [%d, %d] row-major", id, H,
				 cols);
		/* gate g's rows [g*H, (g+1)*H) of W_ih / W_hh, and of b_ih / b_hh */
		void *wm = buf_at(rec ? w_hh : w_ih, (size_t)g * H * cols, t);
		void *bv = buf_at(rec ? b_hh : b_ih, (size_t)g * H, t);
		if (to_space) {
			to_f32(be, (float *)maddr, wm, 1, 1, H * cols, 0);
			to_f32(be, (float *)baddr, bv, 1, 1, H, 0);
		} else {
			from_f32(be, wm, (const float *)maddr, 1, 1, H * cols, 0, 1);
			from_f32(be, bv, (const float *)baddr, 1, 1, H, 0, 1);
		}
	}
	cudnnDestroyTensorDescriptor(md);
	cudnnDestroyTensorDescriptor(bd);
}

#define AT(off) ((float *)((char *)work + (off)))

static void cuda_rnn_forward(backend *be, int cell, void *y, void *hT, void *cT, void *work,
			     const void *x, const void *h0, const void *c0, const int32_t *reset,
			     const void *w_ih, const void *w_hh, const void *b_ih, const void *b_hh,
			     int B, int T, int D, int H)
{
	NVTX_RANGE("rnn_forward");
	cuda_backend *cb = cuda_of(be);
	int lstm = cell == RNN_CELL_LSTM;
	size_t BH = (size_t)B * H;
	rnn_call c;
	call_open(&c, be, cell, B, D, H);
	dnn_layout l = dnn_layout_of(&c, B, T, D, H);
	int *starts = (int *)malloc(((size_t)T + 1) * sizeof *starts);
	if (!starts)
		cuda_die(__FILE__, __LINE__, "rnn: out of host memory");
	int nseg = segments_of(cb, reset, B, T, starts);

	to_f32(be, AT(l.x), x, B, T, D, 1);
	weights_xfer(be, &c, AT(l.w), cell, D, H, (void *)w_ih, (void *)w_hh, (void *)b_ih,
		     (void *)b_hh, 1);
	CUDA_LAUNCH(cdiv((size_t)T * B, RNN_THREADS), RNN_THREADS, 0, cb->stream, rnn_lens_kernel)(
		(int32_t *)AT(l.lens), T, B);
	LAUNCH_CHECK();
	/* the state entering step 0: h0 (fp32), reset rows zeroed */
	to_f32(be, AT(l.hy), h0, 1, 1, B * H, 0);
	to_f32(be, AT(l.cy), lstm ? c0 : NULL, 1, 1, B * H, 0);
	size_t roff = 0;
	for (int s = 0; s < nseg; s++) {
		int t0 = starts[s], len = starts[s + 1] - t0;
		float *hx = AT(l.hseg) + (size_t)t0 * BH, *cx = AT(l.cseg) + (size_t)t0 * BH;
		enter(cb, hx, AT(l.hy), reset, t0, T, B, H);
		if (lstm)
			enter(cb, cx, AT(l.cy), reset, t0, T, B, H);
		size_t ws, rs;
		seg_sizes(&c, B, D, H, len, &ws, &rs);
		if (ws > l.ws_bytes || roff + align_up(rs) > l.rs_bytes)
			cuda_die(__FILE__, __LINE__, "rnn: cuDNN wants %zu + %zu bytes for %d steps, more "
				 "than rnn_work_bytes planned (%zu, %zu)", ws, roff + rs, len, l.ws_bytes,
				 l.rs_bytes);
		CUDNN_CHECK(cudnnRNNForward(c.h, c.rnn, CUDNN_FWD_MODE_TRAINING,
					    (const int32_t *)AT(l.lens) + (size_t)(len - 1) * B, c.xd,
					    AT(l.x) + (size_t)t0 * B * D, c.yd, AT(l.y) + (size_t)t0 * BH,
					    c.hd, hx, AT(l.hy), c.hd, lstm ? cx : NULL,
					    lstm ? AT(l.cy) : NULL, c.wsize, AT(l.w), l.ws_bytes, AT(l.ws),
					    rs, (char *)work + l.rs + roff));
		roff += align_up(rs);
	}
	from_f32(be, y, AT(l.y), B, T, H, 1, 0);
	from_f32(be, hT, AT(l.hy), 1, 1, B * H, 0, 0);
	if (lstm)
		from_f32(be, cT, AT(l.cy), 1, 1, B * H, 0, 0);
	free(starts);
	call_close(&c);
}

static void cuda_rnn_backward(backend *be, int cell, void *dx, void *dh0, void *dc0, void *dw_ih,
			      void *dw_hh, void *db_ih, void *db_hh, const void *dy, const void *dhT,
			      const void *dcT, const void *work_, const void *x, const void *y,
			      const void *h0, const void *c0, const int32_t *reset,
			      const void *w_ih, const void *w_hh, int B, int T, int D, int H)
{
	NVTX_RANGE("rnn_backward");
	(void)x, (void)y, (void)h0, (void)c0, (void)w_ih, (void)w_hh; /* forward's fp32 copies */
	void *work = (void *)work_; /* cuDNN writes its reserve space in backward too */
	cuda_backend *cb = cuda_of(be);
	int lstm = cell == RNN_CELL_LSTM;
	size_t BH = (size_t)B * H;
	rnn_call c;
	call_open(&c, be, cell, B, D, H);
	dnn_layout l = dnn_layout_of(&c, B, T, D, H);
	int *starts = (int *)malloc(((size_t)T + 1) * sizeof *starts);
	size_t *roffs = (size_t *)malloc(((size_t)T + 1) * sizeof *roffs);
	if (!starts || !roffs)
		cuda_die(__FILE__, __LINE__, "rnn: out of host memory");
	int nseg = segments_of(cb, reset, B, T, starts);
	/* forward's reserve offsets, recomputed the same way */
	roffs[0] = 0;
	for (int s = 0; s < nseg; s++) {
		size_t ws, rs;
		seg_sizes(&c, B, D, H, starts[s + 1] - starts[s], &ws, &rs);
		roffs[s + 1] = roffs[s] + align_up(rs);
	}
	to_f32(be, AT(l.dy), dy, B, T, H, 1);
	to_f32(be, AT(l.dh[0]), dhT, 1, 1, B * H, 0);
	to_f32(be, AT(l.dc[0]), lstm ? dcT : NULL, 1, 1, B * H, 0);
	CUDA_CHECK(cudaMemsetAsync(AT(l.dw), 0, c.wsize, cb->stream));
	int cur = 0; /* dh[cur], dc[cur]: the gradient of the current segment's final state */
	for (int s = nseg - 1; s >= 0; s--) {
		int t0 = starts[s], len = starts[s + 1] - t0;
		float *hx = AT(l.hseg) + (size_t)t0 * BH, *cx = AT(l.cseg) + (size_t)t0 * BH;
		const int32_t *lens = (const int32_t *)AT(l.lens) + (size_t)(len - 1) * B;
		void *rsp = (char *)work + l.rs + roffs[s];
		size_t rs = roffs[s + 1] - roffs[s];
		call_segment(&c, B, D, H, len);
		CUDNN_CHECK(cudnnRNNBackwardData_v8(c.h, c.rnn, lens, c.yd, AT(l.y) + (size_t)t0 * BH,
						    AT(l.dy) + (size_t)t0 * BH, c.xd,
						    AT(l.dx) + (size_t)t0 * B * D, c.hd, hx, AT(l.dh[cur]),
						    AT(l.dh[!cur]), c.hd, lstm ? cx : NULL,
						    lstm ? AT(l.dc[cur]) : NULL, lstm ? AT(l.dc[!cur]) : NULL,
						    c.wsize, AT(l.w), l.ws_bytes, AT(l.ws), rs, rsp));
		CUDNN_CHECK(cudnnRNNBackwardWeights_v8(c.h, c.rnn, CUDNN_WGRAD_MODE_ADD, lens, c.xd,
						       AT(l.x) + (size_t)t0 * B * D, c.hd, hx, c.yd,
						       AT(l.y) + (size_t)t0 * BH, c.wsize, AT(l.dw),
						       l.ws_bytes, AT(l.ws), rs, rsp));
		/* to the previous segment's final state, or h0: not across a reset at t0 */
		enter(cb, AT(l.dh[cur]), AT(l.dh[!cur]), reset, t0, T, B, H);
		if (lstm)
			enter(cb, AT(l.dc[cur]), AT(l.dc[!cur]), reset, t0, T, B, H);
	}
	from_f32(be, dx, AT(l.dx), B, T, D, 1, 1);
	from_f32(be, dh0, AT(l.dh[cur]), 1, 1, B * H, 0, 1);
	if (lstm)
		from_f32(be, dc0, AT(l.dc[cur]), 1, 1, B * H, 0, 1);
	weights_xfer(be, &c, AT(l.dw), cell, D, H, dw_ih, dw_hh, db_ih, db_hh, 0);
	free(starts);
	free(roffs);
	call_close(&c);
}

#undef AT

#endif /* ANATOMY_EMU */

/* ---- install ---- */

void cuda_rnn_install(backend *be)
{
	be->rnn_work_bytes = cuda_rnn_work_bytes;
	be->rnn_forward = cuda_rnn_forward;
	be->rnn_backward = cuda_rnn_backward;
}
