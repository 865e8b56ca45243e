/* nccl_emu.cpp: NCCL for the device emulator, across processes.
 *
 * A communicator is a POSIX shared-memory segment named in the unique id:
 * a header (barrier counter and generation, abort flag, rank claims) and one
 * staging slot per rank. A collective moves data in slot-sized chunks: each
 * rank copies its chunk into its slot, all meet at a barrier, each reads
 * what it needs from the slots, all meet again before the slots are reused.
 * "Device" memory is host memory in the emulator, so plain memcpy reaches it.
 * See nccl_emu.h for the semantics kept. */
#include "nccl_emu.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

namespace {

const char ID_MAGIC[16] = "anatomy-ncclemu";
const size_t SLOT_BYTES = (size_t)1 << 20;
const size_t HEADER_BYTES = 4096;
const int MAX_RANKS = 4000; /* the claims must fit the header */

/* All fields zero in a new segment, which is their initial state. */
struct shm_header {
	uint32_t count;	  /* ranks arrived at the current barrier */
	uint32_t gen;	  /* barrier generation */
	uint32_t aborted; /* some rank called ncclCommAbort */
	uint32_t nranks;  /* set by the first rank to arrive */
	uint8_t claimed[MAX_RANKS];
};
static_assert(sizeof(shm_header) <= HEADER_BYTES, "header overflows its page");

} // namespace

struct ncclComm {
	shm_header *h;
	char *slots;
	size_t map_bytes;
	int nranks, rank;
	uint32_t aborted; /* this process called ncclCommAbort */
	ncclResult_t async_err; /* the first failure of a queued collective */
	char last[256];	  /* ncclGetLastError */
};

namespace {

thread_local int group_depth;

uint32_t load(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

ncclResult_t fail(ncclComm *c, ncclResult_t r, const char *what)
{
	if (c)
		snprintf(c->last, sizeof c->last, "%s", what);
	return r;
}

/* All ranks meet. A rank that sees an abort (its own or a peer's) returns
 * ncclRemoteError; the barrier is unusable after that, as the comm is. */
ncclResult_t barrier(ncclComm *c)
{
	shm_header *h = c->h;
	uint32_t g = load(&h->gen);
	if (__atomic_fetch_add(&h->count, 1, __ATOMIC_ACQ_REL) == (uint32_t)c->nranks - 1) {
		__atomic_store_n(&h->count, 0, __ATOMIC_RELAXED);
		__atomic_fetch_add(&h->gen, 1, __ATOMIC_RELEASE);
		return ncclSuccess;
	}
	/* ranks share two cores in the tests: yield first, then sleep briefly */
	for (unsigned spins = 0; load(&h->gen) == g; spins++) {
		if (load(&h->aborted) || load(&c->aborted))
			return fail(c, ncclRemoteError, "a rank aborted the communicator");
		if (spins < 64) {
			sched_yield();
		} else {
			struct timespec ts = { 0, 20 * 1000 };
			nanosleep(&ts, NULL);
		}
	}
	return ncclSuccess;
}

size_t type_size(ncclDataType_t t)
{
	switch (t) {
	case ncclFloat64: case ncclInt64: case ncclUint64: return 8;
	case ncclFloat32: case ncclInt32: case ncclUint32: return 4;
	case ncclBfloat16: case ncclFloat16: return 2;
	case ncclInt8: case ncclUint8: return 1;
	}
	return 0;
}

float bf16_to_f32(uint16_t b)
{
	uint32_t u = (uint32_t)b << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* Round to nearest even; NaN to the canonical 0x7fff, as the emulator's bf16. */
uint16_t f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return 0x7fff;
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/* dst[i] = op over ranks of slot_r[i], i < k, summed in rank order: float for
 * fp32 and bf16 (rounded to bf16 once at the end), double for fp64. */
void reduce_slots(const ncclComm *c, void *dst, ncclDataType_t t, ncclRedOp_t op, size_t k)
{
	int n = c->nranks;
	if (t == ncclFloat64) {
		double *d = (double *)dst;
		for (size_t i = 0; i < k; i++) {
			double acc = 0;
			for (int r = 0; r < n; r++)
				acc = r ? acc + ((const double *)(c->slots + r * SLOT_BYTES))[i]
					: ((const double *)c->slots)[i];
			d[i] = op == ncclAvg ? acc / n : acc;
		}
		return;
	}
	float inv = 1.0f / (float)n;
	for (size_t i = 0; i < k; i++) {
		float acc = 0;
		for (int r = 0; r < n; r++) {
			const char *s = c->slots + r * SLOT_BYTES;
			float x = t == ncclFloat32 ? ((const float *)s)[i] : bf16_to_f32(((const uint16_t *)s)[i]);
			acc = r ? acc + x : x;
		}
		if (op == ncclAvg)
			acc *= inv;
		if (t == ncclFloat32)
			((float *)dst)[i] = acc;
		else
			((uint16_t *)dst)[i] = f32_to_bf16(acc);
	}
}

/* Common argument checks, when the collective is called. */
ncclResult_t begin(ncclComm *c, ncclDataType_t t, cudaStream_t s, size_t *esz)
{
	(void)s;
	if (!c || !c->h)
		return ncclInvalidArgument;
	if (load(&c->aborted) || load(&c->h->aborted))
		return fail(c, ncclRemoteError, "the communicator was aborted");
	*esz = type_size(t);
	if (!*esz)
		return fail(c, ncclInvalidArgument, "unknown datatype");
	return ncclSuccess;
}

bool reducible(ncclDataType_t t, ncclRedOp_t op)
{
	return (t == ncclFloat32 || t == ncclFloat64 || t == ncclBfloat16) && (op == ncclSum || op == ncclAvg);
}

/* NCCL_DEBUG=INFO with COLL in NCCL_DEBUG_SUBSYS: one line per collective on
 * stderr, as real NCCL logs them (the tests read the gradient buckets off it). */
void trace(const ncclComm *c, const char *coll, size_t count, ncclDataType_t t, int root)
{
	static int on = -1;
	if (on < 0) {
		const char *lvl = getenv("NCCL_DEBUG"), *sub = getenv("NCCL_DEBUG_SUBSYS");
		on = lvl && !strcmp(lvl, "INFO") && sub && strstr(sub, "COLL");
	}
	if (on)
		fprintf(stderr, "nccl_emu: rank %d: %s count %zu datatype %d root %d\n", c->rank, coll, count,
			(int)t, root);
}

/* A collective as queued on its stream: it runs when the emulated runtime
 * says (stream order, events; see emu_stream_enqueue), reading its inputs
 * then, as the GPU would. */
struct coll {
	ncclResult_t (*body)(const coll *);
	const void *send;
	void *recv;
	size_t count, esz;
	ncclDataType_t t;
	ncclRedOp_t op;
	int root;
	ncclComm *c;
};

int coll_run(void *p)
{
	coll *x = (coll *)p;
	ncclResult_t r = x->body(x);
	if (r != ncclSuccess && x->c->async_err == ncclSuccess)
		x->c->async_err = r;
	delete x;
	return r != ncclSuccess;
}

/* Queues x on s with the bytes it reads (send) and writes (recv). */
ncclResult_t enqueue(const coll &x, const char *name, const void *caller, cudaStream_t s, size_t send_bytes,
		     size_t recv_bytes)
{
	emu_range r[2] = { { x.send, send_bytes, 0 }, { x.recv, recv_bytes, 1 } };
	coll *q = new coll(x);
	cudaError_t e = emu_stream_enqueue(s, name, caller, coll_run, q, r, 2);
	if (e == cudaErrorInvalidResourceHandle) {
		delete q;
		return fail(x.c, ncclInvalidArgument, "invalid stream");
	}
	if (e != cudaSuccess)
		return fail(x.c, ncclUnhandledCudaError, "cross-stream race (see the emulator's report)");
	return ncclSuccess;
}

ncclResult_t reduce_body(const coll *x)
{
	const void *send = x->send;
	void *recv = x->recv;
	size_t count = x->count, esz = x->esz;
	ncclDataType_t t = x->t;
	ncclRedOp_t op = x->op;
	int root = x->root;
	ncclComm *c = x->c;
	ncclResult_t r;
	size_t chunk = SLOT_BYTES / esz;
	for (size_t off = 0; off < count; off += chunk) {
		size_t k = count - off < chunk ? count - off : chunk;
		memcpy(c->slots + c->rank * SLOT_BYTES, (const char *)send + off * esz, k * esz);
		if ((r = barrier(c)) != ncclSuccess)
			return r;
		if (root < 0 || root == c->rank)
			reduce_slots(c, (char *)recv + off * esz, t, op, k);
		if ((r = barrier(c)) != ncclSuccess)
			return r;
	}
	return ncclSuccess;
}

/* Reduce (root >= 0: only root writes recv) or all-reduce (root < 0). */
ncclResult_t reduce_common(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
			   int root, ncclComm *c, cudaStream_t s, const void *caller)
{
	size_t esz;
	ncclResult_t r = begin(c, t, s, &esz);
	if (r != ncclSuccess)
		return r;
	if (!reducible(t, op))
		return fail(c, ncclInvalidArgument, "the emulator reduces only fp32, fp64, bf16 with sum or avg");
	if (root >= c->nranks)
		return fail(c, ncclInvalidArgument, "root out of range");
	trace(c, root < 0 ? "AllReduce" : "Reduce", count, t, root);
	coll x = { reduce_body, send, recv, count, esz, t, op, root, c };
	return enqueue(x, root < 0 ? "ncclAllReduce" : "ncclReduce", caller, s, count * esz,
		       root < 0 || root == c->rank ? count * esz : 0);
}

ncclResult_t reduce_scatter_body(const coll *x)
{
	ncclComm *c = x->c;
	size_t recvcount = x->count, esz = x->esz, chunk = SLOT_BYTES / esz;
	ncclResult_t r;
	for (int d = 0; d < c->nranks; d++) {
		const char *block = (const char *)x->send + (size_t)d * recvcount * esz;
		for (size_t off = 0; off < recvcount; off += chunk) {
			size_t k = recvcount - off < chunk ? recvcount - off : chunk;
			memcpy(c->slots + c->rank * SLOT_BYTES, block + off * esz, k * esz);
			if ((r = barrier(c)) != ncclSuccess)
				return r;
			if (d == c->rank)
				reduce_slots(c, (char *)x->recv + off * esz, x->t, x->op, k);
			if ((r = barrier(c)) != ncclSuccess)
				return r;
		}
	}
	return ncclSuccess;
}

ncclResult_t all_gather_body(const coll *x)
{
	ncclComm *c = x->c;
	size_t sendcount = x->count, esz = x->esz, chunk = SLOT_BYTES / esz;
	ncclResult_t r;
	for (size_t off = 0; off < sendcount; off += chunk) {
		size_t k = sendcount - off < chunk ? sendcount - off : chunk;
		memcpy(c->slots + c->rank * SLOT_BYTES, (const char *)x->send + off * esz, k * esz);
		if ((r = barrier(c)) != ncclSuccess)
			return r;
		for (int q = 0; q < c->nranks; q++)
			memcpy((char *)x->recv + ((size_t)q * sendcount + off) * esz, c->slots + q * SLOT_BYTES,
			       k * esz);
		if ((r = barrier(c)) != ncclSuccess)
			return r;
	}
	return ncclSuccess;
}

ncclResult_t broadcast_body(const coll *x)
{
	ncclComm *c = x->c;
	size_t count = x->count, esz = x->esz, chunk = SLOT_BYTES / esz;
	ncclResult_t r;
	for (size_t off = 0; off < count; off += chunk) {
		size_t k = count - off < chunk ? count - off : chunk;
		if (c->rank == x->root)
			memcpy(c->slots + x->root * SLOT_BYTES, (const char *)x->send + off * esz, k * esz);
		if ((r = barrier(c)) != ncclSuccess)
			return r;
		memmove((char *)x->recv + off * esz, c->slots + x->root * SLOT_BYTES, k * esz);
		if ((r = barrier(c)) != ncclSuccess)
			return r;
	}
	return ncclSuccess;
}

} // namespace

extern "C" {

ncclResult_t ncclGetVersion(int *version)
{
	*version = 22800; /* the API level emulated */
	return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id)
{
	static unsigned counter;
	struct timespec ts;
	uint64_t rnd = 0;
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || read(fd, &rnd, sizeof rnd) != (ssize_t)sizeof rnd) {
		clock_gettime(CLOCK_REALTIME, &ts);
		rnd = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
	}
	if (fd >= 0)
		close(fd);
	memset(id, 0, sizeof *id);
	memcpy(id->internal, ID_MAGIC, sizeof ID_MAGIC);
	snprintf(id->internal + sizeof ID_MAGIC, sizeof id->internal - sizeof ID_MAGIC,
		 "/anatomy-nccl-%ld-%u-%016llx", (long)getpid(), counter++, (unsigned long long)rnd);
	return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank)
{
	*comm = NULL;
	if (nranks < 1 || nranks > MAX_RANKS || rank < 0 || rank >= nranks ||
	    memcmp(id.internal, ID_MAGIC, sizeof ID_MAGIC))
		return ncclInvalidArgument;
	char name[NCCL_UNIQUE_ID_BYTES];
	memcpy(name, id.internal + sizeof ID_MAGIC, sizeof name - sizeof ID_MAGIC);
	name[sizeof name - sizeof ID_MAGIC - 1] = 0;
	size_t bytes = HEADER_BYTES + (size_t)nranks * SLOT_BYTES;
	int fd = shm_open(name, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0)
		return ncclSystemError;
	/* every rank grows the segment before touching it (growing zero-fills; an
	 * equal size is a no-op), so no rank can map it before it is sized */
	struct stat st;
	if (fstat(fd, &st) || ((size_t)st.st_size < bytes && ftruncate(fd, (off_t)bytes))) {
		close(fd);
		return ncclSystemError;
	}
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return ncclSystemError;
	ncclComm *c = (ncclComm *)calloc(1, sizeof *c);
	if (!c) {
		munmap(p, bytes);
		return ncclSystemError;
	}
	c->h = (shm_header *)p;
	c->slots = (char *)p + HEADER_BYTES;
	c->map_bytes = bytes;
	c->nranks = nranks;
	c->rank = rank;
	uint32_t want = 0;
	uint8_t free_claim = 0;
	if ((!__atomic_compare_exchange_n(&c->h->nranks, &want, (uint32_t)nranks, false, __ATOMIC_ACQ_REL,
					  __ATOMIC_ACQUIRE) && want != (uint32_t)nranks) ||
	    !__atomic_compare_exchange_n(&c->h->claimed[rank], &free_claim, 1, false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE)) {
		/* ranks disagree on the size, or two claim one rank */
		munmap(p, bytes);
		free(c);
		return ncclInvalidUsage;
	}
	ncclResult_t r = barrier(c); /* everyone has mapped it */
	if (r != ncclSuccess) {
		munmap(p, bytes);
		free(c);
		return r;
	}
	if (rank == 0)
		shm_unlink(name); /* the mappings keep it; nothing is left behind */
	*comm = c;
	return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t c)
{
	if (!c)
		return ncclSuccess;
	munmap(c->h, c->map_bytes);
	free(c);
	return ncclSuccess;
}

/* Flags only: another thread of this process may still be inside a
 * collective on c (the watchdog aborts what the main thread waits on), so
 * the mapping stays; the process is about to end anyway. */
ncclResult_t ncclCommAbort(ncclComm_t c)
{
	if (!c)
		return ncclSuccess;
	__atomic_store_n(&c->aborted, 1, __ATOMIC_RELEASE);
	__atomic_store_n(&c->h->aborted, 1, __ATOMIC_RELEASE);
	return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *async_error)
{
	if (!c)
		return ncclInvalidArgument;
	*async_error = c->async_err != ncclSuccess			  ? c->async_err
		       : load(&c->h->aborted) && !load(&c->aborted) ? ncclRemoteError
								      : ncclSuccess;
	return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t c, int *count)
{
	*count = c->nranks;
	return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t c, int *rank)
{
	*rank = c->rank;
	return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r)
{
	switch (r) {
	case ncclSuccess: return "no error";
	case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
	case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
	case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
	case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
	case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
	case ncclRemoteError: return "remote process exited or there was a network error";
	case ncclInProgress: return "NCCL operation in progress";
	default: return "unknown result code";
	}
}

const char *ncclGetLastError(ncclComm_t c)
{
	return c ? c->last : "";
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
			   ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream)
{
	return reduce_common(sendbuff, recvbuff, count, datatype, op, -1, comm, stream, __builtin_return_address(0));
}

ncclResult_t ncclReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
			ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream)
{
	if (root < 0)
		return fail(comm, ncclInvalidArgument, "root out of range");
	return reduce_common(sendbuff, recvbuff, count, datatype, op, root, comm, stream, __builtin_return_address(0));
}

/* Rank r receives the reduction of every rank's block r (recvcount each).
 * One destination block at a time, so a slot holds one rank's piece. */
ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount, ncclDataType_t datatype,
			       ncclRedOp_t op, ncclComm_t c, cudaStream_t stream)
{
	size_t esz;
	ncclResult_t r = begin(c, datatype, stream, &esz);
	if (r != ncclSuccess)
		return r;
	if (!reducible(datatype, op))
		return fail(c, ncclInvalidArgument, "the emulator reduces only fp32, fp64, bf16 with sum or avg");
	trace(c, "ReduceScatter", recvcount, datatype, -1);
	coll x = { reduce_scatter_body, sendbuff, recvbuff, recvcount, esz, datatype, op, -1, c };
	return enqueue(x, "ncclReduceScatter", __builtin_return_address(0), stream,
		       (size_t)c->nranks * recvcount * esz, recvcount * esz);
}

ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype,
			   ncclComm_t c, cudaStream_t stream)
{
	size_t esz;
	ncclResult_t r = begin(c, datatype, stream, &esz);
	if (r != ncclSuccess)
		return r;
	trace(c, "AllGather", sendcount, datatype, -1);
	coll x = { all_gather_body, sendbuff, recvbuff, sendcount, esz, datatype, ncclSum, -1, c };
	return enqueue(x, "ncclAllGather", __builtin_return_address(0), stream, sendcount * esz,
		       (size_t)c->nranks * sendcount * esz);
}

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
			   int root, ncclComm_t c, cudaStream_t stream)
{
	size_t esz;
	ncclResult_t r = begin(c, datatype, stream, &esz);
	if (r != ncclSuccess)
		return r;
	if (root < 0 || root >= c->nranks)
		return fail(c, ncclInvalidArgument, "root out of range");
	trace(c, "Broadcast", count, datatype, root);
	coll x = { broadcast_body, sendbuff, recvbuff, count, esz, datatype, ncclSum, root, c };
	return enqueue(x, "ncclBroadcast", __builtin_return_address(0), stream, c->rank == root ? count * esz : 0,
		       count * esz);
}

ncclResult_t ncclGroupStart(void)
{
	group_depth++;
	return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void)
{
	if (group_depth <= 0)
		return ncclInvalidUsage;
	group_depth--;
	return ncclSuccess;
}

} // extern "C"
