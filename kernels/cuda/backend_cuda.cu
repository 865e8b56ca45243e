/* backend_cuda.cu: the CUDA backend: its constructor, memory, host <-> device
 * transfers with dtype conversion, fill, sync, errors, and the op table that
 * points at the kernels of the other files here (one file per op kind).
 *
 * Types: `act` is bf16 (mixed precision) or fp32 (verification: the same
 * kernels, no TF32); `stat` and `opt` are fp32. Every op runs on one stream
 * and is asynchronous; upload, download, sumsq and sync wait for it.
 *
 * Conversions happen on the host, in a pinned staging buffer, so a transfer
 * is one DMA of the device's own type: float -> bf16 rounds to nearest even
 * (NaN stays NaN), double -> bf16 rounds once, correctly (through a
 * round-to-odd float, which keeps the sticky bit). */
#include "cuda_backend.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define STAGE_BYTES (8u << 20)	/* pinned staging; transfers go through it in chunks */

/* ------------------------------------------------------------ errors */

static int (*failure_cause)(void *ctx, char *buf, size_t n);
static void *failure_ctx;

void backend_cuda_set_failure_cause(int (*cause)(void *ctx, char *buf, size_t n), void *ctx)
{
	failure_cause = cause;
	failure_ctx = ctx;
}

void cuda_die(const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	char cause[256];
	fflush(stdout);
	int have_cause = failure_cause && failure_cause(failure_ctx, cause, sizeof cause);
	if (have_cause)
		fprintf(stderr, "anatomy: error: %s (then cuda: %s:%d: ", cause, file, line);
	else
		fprintf(stderr, "anatomy: error: cuda: %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs(have_cause ? ")\n" : "\n", stderr);
	exit(1);
}

void cuda_check_at(cudaError_t e, const char *what, const char *file, int line)
{
	if (e != cudaSuccess)
		cuda_die(file, line, "%s: %s", what, cudaGetErrorString(e));
}

#ifdef ANATOMY_EMU
/* The emulated build runs under AddressSanitizer (the emulator's race and
 * bounds checks ride on it). Thread stacks are the emulator's coroutines,
 * which fake stacks would confuse, and a command-line program's leaks at exit
 * are not bugs, and a request too large for memory returns NULL. Weak: an emulator runtime that defines its own wins. */
extern "C" __attribute__((weak)) const char *__asan_default_options(void)
{
	/* allocator_may_return_null: an impossible cudaMalloc fails as on a GPU */
	return "detect_leaks=0:detect_stack_use_after_return=0:allocator_may_return_null=1";
}
#endif

/* ------------------------------------------------------------ scratch */

void *cuda_scratch_try(cuda_backend *cb, int slot, size_t bytes)
{
	if (bytes <= cb->scr[slot].cap)
		return cb->scr[slot].p;
	void *p;
	if (cudaMalloc(&p, bytes) != cudaSuccess) {
		cudaGetLastError();
		return NULL;
	}
	/* cudaFree waits for the kernels that may still use the old buffer */
	if (cb->scr[slot].p)
		CUDA_CHECK(cudaFree(cb->scr[slot].p));
	cb->scr[slot].p = p;
	cb->scr[slot].cap = bytes;
	return p;
}

/* The scratch every op needs at the model's largest shapes: attention over
 * [B, T, C] with NH heads, column sums (bias, layernorm and batchnorm gradients) of
 * [B*T, 4C] (the widest biased matmul, the MLP's c_fc) and the encoder's
 * buckets. V is unused: the classifier needs no scratch. Fills want[slot]
 * (SCR_COUNT entries; the slots reserved only at the first step, the sumsq
 * partials and the AdamW table, a few KiB, are 0). */
static void plan_scratch(backend *be, int B, int T, int C, int NH, size_t *want)
{
	size_t BT = (size_t)B * T;
	size_t col = cuda_colsum_scratch_bytes((int)BT, 4 * C), ln = cuda_layernorm_scratch_bytes((int)BT, C);
	size_t bn = cuda_batchnorm_scratch_bytes((int)BT, C);
	for (int i = 0; i < SCR_COUNT; i++)
		want[i] = 0;
	want[SCR_ATT] = cuda_attention_scratch_bytes(dtype_size(be->act), B, T, C, NH);
	want[SCR_COLSUM] = col > ln ? col : ln;
	if (bn > want[SCR_COLSUM])
		want[SCR_COLSUM] = bn;
	want[SCR_ENC] = cuda_encoder_scratch_bytes((int)BT);
}

/* Reserves the scratch of plan_scratch before the first step. */
int cuda_plan(backend *be, int B, int T, int C, int NH, int V, char *err)
{
	(void)V;
	cuda_backend *cb = cuda_of(be);
	size_t want[SCR_COUNT];
	plan_scratch(be, B, T, C, NH, want);
	for (int slot = 0; slot < SCR_COUNT; slot++) {
		if (want[slot] && !cuda_scratch_try(cb, slot, want[slot])) {
			snprintf(err, 256, "--batch/--seq: %d x %d needs %.3f GiB more of device memory for "
				 "scratch (slot %d), which %.100s does not have", B, T, want[slot] / 1073741824.0,
				 slot, cb->devname);
			return -1;
		}
	}
	return 0;
}

/* Device memory the backend holds for itself: the fixed buffers allocated
 * with it (the matmul workspace, the layernorm backward's completion
 * counter) and the scratch slots, as they are now (B = 0) or as cuda_plan
 * would leave them for these shapes. */
static size_t cu_workspace_bytes(backend *be, int B, int T, int C, int NH, int V)
{
	(void)V;
	cuda_backend *cb = cuda_of(be);
	size_t want[SCR_COUNT], total = mm_device_bytes() + sizeof *cb->ln_done;
	if (B > 0)
		plan_scratch(be, B, T, C, NH, want);
	for (int slot = 0; slot < SCR_COUNT; slot++) {
		size_t have = cb->scr[slot].cap;
		total += B > 0 && want[slot] > have ? want[slot] : have;
	}
	return total;
}

static int cu_mem_info(backend *be, size_t *free_bytes, size_t *total_bytes)
{
	(void)be;
	if (cudaMemGetInfo(free_bytes, total_bytes) != cudaSuccess) {
		cudaGetLastError();
		return -1;
	}
	return 0;
}

void *cuda_scratch(cuda_backend *cb, int slot, size_t bytes)
{
	if (bytes <= cb->scr[slot].cap)
		return cb->scr[slot].p;
	/* cudaFree waits for the kernels that may still use the old buffer */
	if (cb->scr[slot].p)
		CUDA_CHECK(cudaFree(cb->scr[slot].p));
	cb->scr[slot].p = NULL;
	cb->scr[slot].cap = 0;
	size_t want = bytes + bytes / 8;	/* a little room: shapes vary slightly */
	if (cudaMalloc(&cb->scr[slot].p, want) != cudaSuccess) {
		cudaGetLastError();
		cuda_die(__FILE__, __LINE__, "out of device memory: scratch of %.3f GiB (slot %d) on %s", want / 1073741824.0,
			 slot, cb->devname);
	}
	cb->scr[slot].cap = want;
	return cb->scr[slot].p;
}

/* ------------------------------------------------------- token shadows */

/* Forgets shadows overlapping [p, p + bytes): that memory is being rewritten. */
static void shadow_forget(cuda_backend *cb, const void *p, size_t bytes)
{
	uintptr_t a = (uintptr_t)p, e = a + bytes;
	for (int i = 0; i < CUDA_NSHADOW; i++) {
		struct tok_shadow *s = &cb->shadow[i];
		uintptr_t sa = (uintptr_t)s->dev, se = sa + s->n * sizeof(int32_t);
		if (s->dev && sa < e && a < se)
			s->dev = NULL;
	}
}

static void shadow_record(cuda_backend *cb, const void *dev, const int32_t *host, size_t n)
{
	shadow_forget(cb, dev, n * sizeof(int32_t));
	if (n > (1u << 24))
		return;		/* not token ids; not worth the copy */
	struct tok_shadow *s = &cb->shadow[0];
	for (int i = 1; i < CUDA_NSHADOW; i++)
		if (!cb->shadow[i].dev || (s->dev && cb->shadow[i].used < s->used))
			s = &cb->shadow[i];
	if (n > s->cap) {
		int32_t *h = (int32_t *)realloc(s->host, n * sizeof(int32_t));
		if (!h) {
			s->dev = NULL;
			return;
		}
		s->host = h;
		s->cap = n;
	}
	memcpy(s->host, host, n * sizeof(int32_t));
	s->dev = dev;
	s->n = n;
	s->used = ++cb->shadow_clock;
}

const int32_t *cuda_shadow_find(cuda_backend *cb, const void *dev, size_t n)
{
	for (int i = 0; i < CUDA_NSHADOW; i++) {
		struct tok_shadow *s = &cb->shadow[i];
		if (s->dev == dev && s->n >= n) {
			s->used = ++cb->shadow_clock;
			return s->host;
		}
	}
	return NULL;
}

/* ------------------------------------------------ host-side conversion */

static float f32_of_bits(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static uint32_t bits_of_f32(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static uint16_t bf16_from_f32(float f)
{
	uint32_t u = bits_of_f32(f);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return 0x7fff;
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/* Correctly rounded: double -> float rounding to odd (truncate, then set the
 * last bit if anything was lost) keeps enough to round to bf16 once. */
static uint16_t bf16_from_f64(double d)
{
	if (d != d)
		return 0x7fff;
	float f = (float)d;
	if ((double)f != d && !isinf(f)) {
		if (fabs((double)f) > fabs(d))
			f = nextafterf(f, 0.0f);
		f = f32_of_bits(bits_of_f32(f) | 1u);
	}
	return bf16_from_f32(f);
}

static double host_load(const void *p, dtype t, size_t i)
{
	switch (t) {
	case DT_F32: return ((const float *)p)[i];
	case DT_F64: return ((const double *)p)[i];
	case DT_BF16: return f32_of_bits((uint32_t)((const uint16_t *)p)[i] << 16);
	default: return ((const int32_t *)p)[i];
	}
}

/* Integers saturate and truncate toward zero; NaN becomes 0 (as the CPU backend). */
static void host_store(void *p, dtype t, size_t i, double x)
{
	switch (t) {
	case DT_F32: ((float *)p)[i] = (float)x; break;
	case DT_F64: ((double *)p)[i] = x; break;
	case DT_BF16: ((uint16_t *)p)[i] = bf16_from_f64(x); break;
	default:
		if (x != x)
			x = 0;
		x = x < INT32_MIN ? INT32_MIN : (x > INT32_MAX ? INT32_MAX : x);
		((int32_t *)p)[i] = (int32_t)x;
	}
}

/* n elements of type st at src -> type dt at dst (host memory both). */
static void host_convert(void *dst, dtype dt, const void *src, dtype st, size_t n)
{
	if (dt == st) {
		memcpy(dst, src, n * dtype_size(dt));
	} else if (dt == DT_BF16 && st == DT_F32) {
		const float *s = (const float *)src;
		uint16_t *d = (uint16_t *)dst;
		for (size_t i = 0; i < n; i++)
			d[i] = bf16_from_f32(s[i]);
	} else if (dt == DT_F32 && st == DT_BF16) {
		const uint16_t *s = (const uint16_t *)src;
		float *d = (float *)dst;
		for (size_t i = 0; i < n; i++)
			d[i] = f32_of_bits((uint32_t)s[i] << 16);
	} else {
		for (size_t i = 0; i < n; i++)
			host_store(dst, dt, i, host_load(src, st, i));
	}
}

/* ------------------------------------------------------------ memory */

static void *cu_alloc(backend *be, size_t bytes)
{
	(void)be;
	void *p = NULL;
	if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
		cudaGetLastError();	/* out of memory is the caller's to report */
		return NULL;
	}
	return p;
}

static void cu_free(backend *be, void *p)
{
	if (!p)
		return;
	cuda_backend *cb = cuda_of(be);
	for (int i = 0; i < CUDA_NSHADOW; i++)
		if (cb->shadow[i].dev == p)
			cb->shadow[i].dev = NULL;
	CUDA_CHECK(cudaFree(p));
}

/* Elements per staging chunk for a transfer between types a and b. */
static size_t stage_elems(dtype a, dtype b)
{
	size_t w = dtype_size(a) > dtype_size(b) ? dtype_size(a) : dtype_size(b);
	return STAGE_BYTES / w;
}

static void cu_upload(backend *be, void *dst, dtype dt, const void *src, dtype ht, size_t n)
{
	NVTX_RANGE("upload");
	cuda_backend *cb = cuda_of(be);
	if (!n || !dst || !src)
		return;
	size_t ds = dtype_size(dt), hs = dtype_size(ht);
	if (dt == DT_I32 && ht == DT_I32)
		shadow_record(cb, dst, (const int32_t *)src, n);
	else
		shadow_forget(cb, dst, n * ds);
	size_t chunk = stage_elems(dt, ht);
	for (size_t off = 0; off < n; off += chunk) {
		size_t k = n - off < chunk ? n - off : chunk;
		host_convert(cb->stage, dt, (const char *)src + off * hs, ht, k);
		CUDA_CHECK(cudaMemcpyAsync((char *)dst + off * ds, cb->stage, k * ds, cudaMemcpyHostToDevice,
					   cb->stream));
		/* the staging buffer is reused by the next chunk or call */
		CUDA_CHECK(cudaStreamSynchronize(cb->stream));
	}
}

static void cu_download(backend *be, void *dst, dtype ht, const void *src, dtype dt, size_t n)
{
	NVTX_RANGE("download");
	cuda_backend *cb = cuda_of(be);
	if (!n || !dst || !src)
		return;
	size_t ds = dtype_size(dt), hs = dtype_size(ht);
	size_t chunk = stage_elems(dt, ht);
	for (size_t off = 0; off < n; off += chunk) {
		size_t k = n - off < chunk ? n - off : chunk;
		CUDA_CHECK(cudaMemcpyAsync(cb->stage, (const char *)src + off * ds, k * ds, cudaMemcpyDeviceToHost,
					   cb->stream));
		CUDA_CHECK(cudaStreamSynchronize(cb->stream));
		host_convert((char *)dst + off * hs, ht, cb->stage, dt, k);
	}
}

template <class U> __global__ void fill_kernel(U *p, U v, size_t n)
{
	size_t stride = (size_t)gridDim.x * blockDim.x;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		p[i] = v;
}

/* The element's bits are made on the host (same rounding as upload), then
 * copied n times: 2-, 4- or 8-byte patterns. */
static void cu_fill(backend *be, void *dst, dtype t, double value, size_t n)
{
	NVTX_RANGE("fill");
	cuda_backend *cb = cuda_of(be);
	if (!n || !dst)
		return;
	shadow_forget(cb, dst, n * dtype_size(t));
	if (value == 0.0 && !signbit(value)) {
		CUDA_CHECK(cudaMemsetAsync(dst, 0, n * dtype_size(t), cb->stream));
		return;
	}
	unsigned char bits[8];
	host_store(bits, t, 0, value);
	unsigned blocks = (unsigned)(n / 256 + 1 < 4096 ? n / 256 + 1 : 4096);
	switch (dtype_size(t)) {
	case 2: {
		uint16_t v;
		memcpy(&v, bits, 2);
		CUDA_LAUNCH(blocks, 256, 0, cb->stream, fill_kernel<uint16_t>)((uint16_t *)dst, v, n);
		break;
	}
	case 8: {
		unsigned long long v;
		memcpy(&v, bits, 8);
		CUDA_LAUNCH(blocks, 256, 0, cb->stream, fill_kernel<unsigned long long>)((unsigned long long *)dst, v,
											   n);
		break;
	}
	default: {
		uint32_t v;
		memcpy(&v, bits, 4);
		CUDA_LAUNCH(blocks, 256, 0, cb->stream, fill_kernel<uint32_t>)((uint32_t *)dst, v, n);
	}
	}
	LAUNCH_CHECK();
}

static void cu_sync(backend *be)
{
	CUDA_CHECK(cudaStreamSynchronize(cuda_of(be)->stream));
	LAUNCH_CHECK();
}

/* The op table's range hook: NVTX ranges for Nsight Systems (a no-op in the
 * emulated build and with ANATOMY_NO_NVTX). NVTX copies the name at the push. */
static void cu_range(backend *be, const char *name, int push)
{
	(void)be;
#if defined(ANATOMY_EMU) || defined(ANATOMY_NO_NVTX)
	(void)name;
	(void)push;
#else
	if (push)
		nvtxRangePushA(name);
	else
		nvtxRangePop();
#endif
}

/* The op table's stream hook: NCCL queues its collectives on this stream. */
static void *cu_stream(backend *be)
{
	return (void *)cuda_of(be)->stream;
}

static void cu_destroy(backend *be)
{
	cuda_backend *cb = cuda_of(be);
	if (!cb)
		return;
	if (cb->stream)
		cudaStreamSynchronize(cb->stream);
	for (int i = 0; i < SCR_COUNT; i++)
		if (cb->scr[i].p)
			cudaFree(cb->scr[i].p);
	for (int i = 0; i < CUDA_NSHADOW; i++)
		free(cb->shadow[i].host);
	mm_destroy(cb->mm);
	if (cb->stage)
		cudaFreeHost(cb->stage);
	if (cb->enc_stage)
		cudaFreeHost(cb->enc_stage);
	if (cb->enc_done)
		cudaEventDestroy(cb->enc_done);
	if (cb->ln_done)
		cudaFree(cb->ln_done);
	if (cb->stream)
		cudaStreamDestroy(cb->stream);
	free(cb->adamw_host);
	free(cb);
}

/* ------------------------------------------------------- constructor */

/* Fails (NULL, err filled) when no usable device is there: no driver or GPU,
 * a bad index, a card older than sm_80 (bf16 and the kernels' targets), or
 * no memory for the context. */
extern "C" unsigned long backend_cuda_matmul_count(backend *be, int epilogue)
{
	if (!be || be->destroy != cu_destroy || epilogue < 0 || epilogue >= CUDA_MM_EPILOGUES)
		return 0;
	return mm_runs(cuda_of(be)->mm, epilogue);
}

extern "C" backend *backend_cuda_create(int device, dtype act, char *err)
{
	char tmp[256];
	int ndev = 0;
	cudaError_t e;
	if (!err)
		err = tmp;
	if (act != DT_F32 && act != DT_BF16) {
		snprintf(err, 256, "CUDA backend: activations must be fp32 or bf16, not %s", dtype_name(act));
		return NULL;
	}
	if ((e = cudaGetDeviceCount(&ndev)) != cudaSuccess || ndev < 1) {
		cudaGetLastError();
		snprintf(err, 256, "no CUDA device available (%s)", e ? cudaGetErrorString(e) : "none found");
		return NULL;
	}
	if (device < 0 || device >= ndev) {
		snprintf(err, 256, "CUDA device %d does not exist (%d present)", device, ndev);
		return NULL;
	}
	if ((e = cudaSetDevice(device)) != cudaSuccess) {
		cudaGetLastError();
		snprintf(err, 256, "CUDA device %d: %s", device, cudaGetErrorString(e));
		return NULL;
	}
	cudaDeviceProp prop;
	if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) {
		cudaGetLastError();
		snprintf(err, 256, "CUDA device %d: %s", device, cudaGetErrorString(e));
		return NULL;
	}
	if (prop.major < 8) {
		snprintf(err, 256, "CUDA device %d (%.120s) has compute capability %d.%d; this build needs 8.0 or newer",
			 device, prop.name, prop.major, prop.minor);
		return NULL;
	}
	cuda_backend *cb = (cuda_backend *)calloc(1, sizeof *cb);
	if (!cb) {
		snprintf(err, 256, "CUDA backend: out of host memory");
		return NULL;
	}
	cb->device = device;
	cb->sms = prop.multiProcessorCount;
	snprintf(cb->devname, sizeof cb->devname, "%s", prop.name);
	if (cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking) != cudaSuccess ||
	    cudaEventCreateWithFlags(&cb->enc_done, cudaEventDisableTiming) != cudaSuccess ||
	    cudaMallocHost(&cb->stage, STAGE_BYTES) != cudaSuccess ||
	    cudaMalloc(&cb->ln_done, sizeof *cb->ln_done) != cudaSuccess ||
	    /* on the backend's stream: the legacy stream's memset would not be
	     * ordered before the layernorm kernels on this non-blocking one */
	    cudaMemsetAsync(cb->ln_done, 0, sizeof *cb->ln_done, cb->stream) != cudaSuccess) {
		snprintf(err, 256, "CUDA device %d: cannot create a stream and staging buffers: %s", device,
			 cudaGetErrorString(cudaGetLastError()));
		cu_destroy(&cb->be);
		return NULL;
	}
	cb->stage_cap = STAGE_BYTES;
	cb->mm = mm_create(cb->stream, err);
	if (!cb->mm) {
		cu_destroy(&cb->be);
		return NULL;
	}

	backend *be = &cb->be;
	be->name = "cuda";
	be->act = act;
	be->stat = DT_F32;
	be->opt = DT_F32;
	be->ctx = cb;
	be->alloc = cu_alloc;
	be->free = cu_free;
	be->upload = cu_upload;
	be->download = cu_download;
	be->fill = cu_fill;
	be->sync = cu_sync;
	be->destroy = cu_destroy;
	be->encoder_forward = cuda_encoder_forward;
	be->encoder_backward = cuda_encoder_backward;
	be->layernorm_forward = cuda_layernorm_forward;
	be->layernorm_backward = cuda_layernorm_backward;
	be->residual_layernorm_forward = cuda_residual_layernorm_forward;
	be->batchnorm_forward = cuda_batchnorm_forward;
	be->residual_batchnorm_forward = cuda_residual_batchnorm_forward;
	be->batchnorm_backward = cuda_batchnorm_backward;
	be->matmul_forward = cuda_matmul_forward;
	be->matmul_backward = cuda_matmul_backward;
	be->matmul_gelu_forward = cuda_matmul_gelu_forward;
	be->matmul_gelu_backward = cuda_matmul_gelu_backward;
	be->attention_forward = cuda_attention_forward;
	be->attention_backward = cuda_attention_backward;
	be->gelu_forward = cuda_gelu_forward;
	be->gelu_backward = cuda_gelu_backward;
	be->residual_forward = cuda_residual_forward;
	be->accumulate = cuda_accumulate;
	be->crossentropy = cuda_crossentropy;
	be->sumsq = cuda_sumsq;
	be->adamw = cuda_adamw;
	be->params_from_master = cuda_params_from_master;
	be->attention_decode = cuda_attention_decode;
	cuda_seq_install(be);
	cuda_rnn_install(be);
	be->plan = cuda_plan;
	be->mem_info = cu_mem_info;
	be->workspace_bytes = cu_workspace_bytes;
	be->range = cu_range;
	be->stream = cu_stream;
	return be;
}
