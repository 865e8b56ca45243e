/* kernels/cuda/emu/emu.cpp: the device emulator's runtime.
 *
 * A launch runs its blocks on the calling host thread, in a shuffled order.
 * Within a block every CUDA thread is a coroutine with its own stack; a
 * thread runs until it reaches a barrier, a warp collective or its end, and
 * the scheduler then picks the next runnable thread in an order drawn from
 * ANATOMY_EMU_SEED, so code that depends on an unsynchronised order gives
 * different answers than it would by luck. Blocks are coroutines too: up to
 * a few of them (the resident limit) are started at once, each with its own
 * threads, stacks and shared memory, and the grid scheduler switches between
 * them when one waits on a flag another block has yet to release
 * (emu_spin_wait, behind flag_wait_geq in ptx.cuh) or releases one. When no
 * started block can go on and none may start, the grid is deadlocked and
 * reported, as it would hang on a GPU.
 *
 * Bug finding rides on AddressSanitizer when the kernels are built with
 * -fsanitize=address -fsanitize-recover=address: during a launch all shared
 * memory is poisoned, so every access to it from kernel code reaches
 * __asan_report_*_noabort, which this file defines (the executable's
 * definition wins over libasan's). There we check bounds and run the race
 * detector, then let the access proceed; anything that is not ours goes on to
 * libasan's own report. Out-of-bounds global accesses hit the redzones that
 * cudaMalloc puts around each allocation and are reported here with the
 * allocation they missed. This file itself is compiled without the sanitizer.
 *
 * Race detection: every shared byte has a shadow cell holding the last writer
 * and reader with a stamp from one counter that advances at every barrier and
 * __syncwarp. Two accesses by different threads, at least one a write, are a
 * race unless a __syncthreads or a __syncwarp that both took part in
 * separates them. */
#include <errno.h>
#include "emu.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

/* Report text is cut to its buffer on purpose. */
#pragma GCC diagnostic ignored "-Wformat-truncation"

/* ---- sanitizer interface, present only when linked with libasan ---- */
extern "C" {
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size) __attribute__((weak));
void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old, size_t *size_old) __attribute__((weak));
void __asan_poison_memory_region(void const volatile *addr, size_t size) __attribute__((weak));
void __asan_unpoison_memory_region(void const volatile *addr, size_t size) __attribute__((weak));
int __asan_address_is_poisoned(void const volatile *addr) __attribute__((weak));
void *__asan_region_is_poisoned(void *beg, size_t size) __attribute__((weak));
void __sanitizer_symbolize_pc(void *pc, const char *fmt, char *out_buf, size_t out_buf_size) __attribute__((weak));
}

static int asan_on(void) { return __asan_poison_memory_region != NULL; }
static void poison(const void *p, size_t n) { if (asan_on() && n) __asan_poison_memory_region(p, n); }
static void unpoison(const void *p, size_t n) { if (asan_on() && n) __asan_unpoison_memory_region(p, n); }

/* Copies that neither libasan's interceptors nor the compiler's memcpy idiom
 * see: the runtime moves poisoned shared memory on a lane's behalf. */
static void raw_copy(void *dst, const void *src, size_t n)
{
	volatile unsigned char *d = (volatile unsigned char *)dst;
	const volatile unsigned char *s = (const volatile unsigned char *)src;
	for (size_t i = 0; i < n; i++)
		d[i] = s[i];
}

/* ---- context switch (x86-64 System V; ucontext elsewhere would do) ---- */
#if !defined(__x86_64__)
#error "the emulator's context switch is written for x86-64"
#endif
extern "C" void emu_ctx_switch(void **save_sp, void *to_sp);
asm(".text\n"
    ".globl emu_ctx_switch\n"
    ".type emu_ctx_switch,@function\n"
    "emu_ctx_switch:\n"
    "	pushq %rbp\n"
    "	pushq %rbx\n"
    "	pushq %r12\n"
    "	pushq %r13\n"
    "	pushq %r14\n"
    "	pushq %r15\n"
    "	subq $8, %rsp\n"
    "	stmxcsr (%rsp)\n"
    "	fnstcw 4(%rsp)\n"
    "	movq %rsp, (%rdi)\n"
    "	movq %rsi, %rsp\n"
    "	ldmxcsr (%rsp)\n"
    "	fldcw 4(%rsp)\n"
    "	addq $8, %rsp\n"
    "	popq %r15\n"
    "	popq %r14\n"
    "	popq %r13\n"
    "	popq %r12\n"
    "	popq %rbx\n"
    "	popq %rbp\n"
    "	ret\n"
    ".size emu_ctx_switch, .-emu_ctx_switch\n");

/* ---- state ---- */
enum { T_RUNNABLE, T_BARRIER, T_WARP, T_EXITED, T_SPIN };

struct cp_entry {
	void *dst;
	const void *src;
	int size, src_size, group;
	const void *pc;
	unsigned char data[16];	/* the source as read at issue */
};

struct emu_thread {
	emu_tls pub;
	void *sp;
	char *stack;
	size_t stack_size;
	int state, started;
	unsigned tid, lane, warp;
	const void *wait_pc;
	const char *wait_what;
	int bar_op, bar_pred, bar_result;
	unsigned wmask;
	emu_warp_fn wfn;
	void *win, *wout;
	std::vector<cp_entry> *cp;
	int cp_groups;
	void *fake_stack;
	const volatile int *spin_addr;	/* T_SPIN: waits until *spin_addr >= spin_value */
	int spin_value;
};

/* One shadow cell per shared byte. */
struct shadow {
	uint32_t wgen, rgen;
	uint16_t wtid, rtid, ptid;
	uint8_t watomic, rmulti, pending;
	const void *wpc, *rpc, *ppc;
};

/* A function-scope static from the symbol table: block-shared memory. */
struct svar {
	uintptr_t beg;
	size_t size, span, shadow_off, restore;
	std::string name, mangled;
};

struct dev_alloc {
	size_t size;
	char *raw;
	size_t raw_size;
	const void *pc;
	int pinned;
};

struct freed_alloc {
	uintptr_t beg;
	size_t size;
};

struct sched {
	emu_launch_desc *d;
	emu_thread *t;
	unsigned n, live, nbar, nspin;
	unsigned slot;			/* which resident slot (stacks, shared memory) */
	int preempt;			/* go back to the grid scheduler at the next switch */
	std::vector<unsigned> runq;
	size_t runq_head;
	unsigned warp_arrived[32];
	uint3 bid;
	int abort;			/* cudaError_t of the failure, 0 if none */
	uint64_t rng;
	uint32_t blk_gen, bar_gen;
	uint32_t pair_gen[32][32][32];	/* [warp][lane][lane]: last common __syncwarp */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
__thread emu_tls *emu_cur;
static __thread emu_thread *t_self;
static __thread cudaError_t t_last_error, t_pending_error;

static int g_init;
static uint64_t g_seed = 1;
static uint64_t g_srng;		/* the coin that runs queued stream work early */
static int g_quiet, g_initcheck = 1;
static size_t g_stack_size = 256 * 1024;
static uint64_t g_switches;

static sched *S;			/* the running block, or NULL */
static void *g_sched_sp;
static const void *g_main_bottom;
static size_t g_main_size;
static uint32_t g_gen = 1;

static char *g_stacks;
static unsigned g_nstacks;
static size_t g_stacks_bytes;
static int g_stacks_dirty;

static std::vector<svar> g_svars;
static std::vector<shadow> g_sshadow;	/* static shared (the running block's) */
static size_t g_sshadow_n;
static char *g_dyn;			/* dynamic shared arena (the running block's) */
static size_t g_dyn_size, g_dyn_cap;
static std::vector<shadow> g_dshadow;
static const size_t DYN_REDZONE = 256;

static std::map<uintptr_t, dev_alloc> g_allocs;
/* Device memory as cudaMemGetInfo reports it: the bytes that cudaMalloc
 * holds now (exactly what was asked for, so that a program's own account of
 * its allocations can be checked against it), and the device's size:
 * ANATOMY_EMU_DEVICE_MB when set, past which cudaMalloc fails as a full GPU
 * would; otherwise the host's physical memory. */
static size_t g_live_bytes, g_device_bytes;
static freed_alloc g_freed[64];
static unsigned g_nfreed;
static std::set<void *> g_streams, g_events;
/* a kernel's access to an allocation watched for the cross-stream race check */
static int watch_record(uintptr_t a, size_t n, int write);
static std::map<const void *, int> g_max_dyn_smem;
/* Mangled names of the program's functions by address (to find a kernel's
 * static __shared__ variables, _ZZ<kernel>E<var>), and the static shared
 * bytes of each kernel launched so far. */
static std::map<uintptr_t, std::string> g_funcs;
static std::map<const void *, size_t> g_static_smem;
/* Registers per thread of each kernel as ptxas reported them (the most over
 * the targets), by its name with template arguments and no spaces
 * ("adamw_kernel<float>"): read from the file ANATOMY_EMU_PTXAS names (the
 * build's ptxas.txt) or set by emu_set_kernel_regs; kernels not in it are not
 * checked. And each launched kernel's key into it. */
static std::map<std::string, int> g_kernel_regs;
static std::map<std::string, int> g_kernel_regs_sm90;	/* the occupancy calculator's (sm_90) */
static std::map<const void *, std::string> g_kernel_names;
/* sm_80/sm_90: 64K 32-bit registers per SM (and so per block), at most 255 per
 * thread, allocated per warp in units of 256 */
static const int REGS_PER_SM = 65536, REGS_MAX = 255, REG_UNIT = 256;
/* sm_90: 48 KiB of shared memory per block without the opt-in, 227 KiB with it */
static const size_t SMEM_DEFAULT = 48 * 1024, SMEM_OPTIN = 227 * 1024;
/* an sm_90 SM: shared memory (a block also takes 1 KiB the system reserves),
 * resident warps and blocks */
static const size_t SMEM_PER_SM = 228 * 1024, SMEM_RESERVED = 1024;
static const int WARPS_PER_SM = 64, BLOCKS_PER_SM = 32;

static char g_report[8192];
static char g_pending[4096];
static const void *g_pending_pc[2];

/* ---- small helpers ---- */
static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* "void k<8, true>(float*, int)" -> "k<8,true>": the key of g_kernel_regs. */
static std::string kernel_key(const std::string &sig)
{
	std::string k;
	int depth = 0;
	size_t start = sig.compare(0, 5, "void ") == 0 ? 5 : 0;
	for (size_t i = start; i < sig.size(); i++) {
		char c = sig[i];
		if (c == '<')
			depth++;
		else if (c == '>')
			depth--;
		else if (c == '(' && depth == 0)
			break;
		if (c != ' ')
			k += c;
	}
	return k;
}

/* Lines of build/cuda/ptxas.txt: "<file> <arch> regs <n> ... spill-ld <n>  <signature>". */
static void kernel_regs_load(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "emu: warning: ANATOMY_EMU_PTXAS=%s: %s; registers are not checked\n", path, strerror(errno));
		return;
	}
	char line[4096];
	while (fgets(line, sizeof line, f)) {
		int regs;
		const char *r = strstr(line, " regs "), *sl = strstr(line, "spill-ld ");
		if (!r || !sl || sscanf(r + 6, "%d", &regs) != 1)
			continue;
		sl += 9;
		while (*sl == ' ' || (*sl >= '0' && *sl <= '9'))
			sl++;
		std::string sig(sl);
		while (!sig.empty() && (sig.back() == '\n' || sig.back() == ' '))
			sig.pop_back();
		std::string k = kernel_key(sig);
		if (!k.empty() && regs > g_kernel_regs[k])
			g_kernel_regs[k] = regs;
		char arch[16] = "";
		if (!k.empty() && sscanf(line, "%*s %15s", arch) == 1 && !strcmp(arch, "sm_90"))
			g_kernel_regs_sm90[k] = regs;
	}
	fclose(f);
}

static void env_init(void)
{
	if (g_init)
		return;
	g_init = 1;
	const char *s = getenv("ANATOMY_EMU_SEED");
	if (s && *s)
		g_seed = strtoull(s, NULL, 0);
	s = getenv("ANATOMY_EMU_INITCHECK");
	if (s && *s == '0')
		g_initcheck = 0;
	s = getenv("ANATOMY_EMU_STACK_KB");
	if (s && atoi(s) >= 16)
		g_stack_size = (size_t)atoi(s) * 1024;
	s = getenv("ANATOMY_EMU_QUIET");
	if (s && *s == '1')
		g_quiet = 1;
	g_srng = g_seed * 0x2545f4914f6cdd1dull + 0x9e3779b97f4a7c15ull;
	s = getenv("ANATOMY_EMU_PTXAS");
	if (s && *s)
		kernel_regs_load(s);
	s = getenv("ANATOMY_EMU_DEVICE_MB");
	if (s && atoll(s) > 0)
		g_device_bytes = (size_t)atoll(s) << 20;
}

/* Source location of a return address as "file:line", relative to the
 * working directory. Inlined frames of the emulator's own headers are
 * skipped so the location is the kernel's line; a ptx.cuh frame is kept as a
 * note. Uses libasan's symbolizer when linked with it, else addr2line. */
static void symbolize(const void *pc, char *buf, size_t n)
{
	snprintf(buf, n, "%p", pc);
	if (!pc)
		return;
	void *p = (void *)((uintptr_t)pc - 1);
	std::vector<std::string> frames;
	char tmp[2048];
	memset(tmp, 0, sizeof(tmp));
	if (__sanitizer_symbolize_pc) {
		/* frames come innermost first, each NUL-terminated, then an empty one */
		__sanitizer_symbolize_pc(p, "%s:%l", tmp, sizeof(tmp) - 1);
		for (const char *f = tmp; *f && f < tmp + sizeof(tmp); f += strlen(f) + 1)
			frames.push_back(f);
	} else {
		Dl_info info;
		if (dladdr(p, &info) && info.dli_fname) {
			char cmd[1200];
			uintptr_t off = (uintptr_t)p - (uintptr_t)info.dli_fbase;
			snprintf(cmd, sizeof(cmd), "addr2line -i -e '%s' 0x%lx 2>/dev/null", info.dli_fname, (unsigned long)off);
			FILE *f = popen(cmd, "r");
			if (f) {
				while (fgets(tmp, sizeof(tmp) - 1, f)) {
					tmp[strcspn(tmp, "\n ")] = 0;
					frames.push_back(tmp);
				}
				pclose(f);
			}
		}
	}
	char cwd[512];
	size_t cl = 0;
	if (getcwd(cwd, sizeof(cwd) - 1)) {
		cl = strlen(cwd);
		cwd[cl++] = '/';
		cwd[cl] = 0;
	}
	std::string via, at;
	for (std::string &fr : frames) {
		if (fr.find("??") != std::string::npos)
			continue;
		if (cl && fr.compare(0, cl, cwd) == 0)
			fr = fr.substr(cl);
		if (fr.find("cuda/emu/emu") != std::string::npos)
			continue;
		if (fr.find("cuda/ptx.cuh") != std::string::npos) {
			if (via.empty())
				via = fr;
			continue;
		}
		at = fr;
		break;
	}
	if (at.empty())
		at = via;
	else if (!via.empty())
		at += " (in " + via + ")";
	if (!at.empty())
		snprintf(buf, n, "%s", at.c_str());
}

static void thread_name(const emu_thread *t, char *buf, size_t n)
{
	snprintf(buf, n, "thread (%u,%u,%u)", t->pub.tidx.x, t->pub.tidx.y, t->pub.tidx.z);
}

static void publish_report(const char *msg)
{
	snprintf(g_report, sizeof(g_report), "%s", msg);
	if (!g_quiet)
		fprintf(stderr, "%s\n", msg);
}

/* Host-side error: report it and make it the thread's last error. */
static cudaError_t host_error(cudaError_t e, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	int k = snprintf(msg, sizeof(msg), "emu: error: ");
	vsnprintf(msg + k, sizeof(msg) - k, fmt, ap);
	va_end(ap);
	publish_report(msg);
	t_last_error = e;
	return e;
}

/* ---- fibers ---- */
static void fiber_main(void);

static void stacks_reserve(unsigned n)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	if (n <= g_nstacks)
		return;
	if (g_stacks)
		munmap(g_stacks, g_stacks_bytes);
	size_t each = g_stack_size + page;
	g_stacks_bytes = each * n;
	g_stacks = (char *)mmap(NULL, g_stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (g_stacks == MAP_FAILED) {
		g_stacks = NULL;
		g_nstacks = 0;
		return;
	}
	for (unsigned i = 0; i < n; i++)
		mprotect(g_stacks + i * each, page, PROT_NONE);	/* guard below each stack */
	g_nstacks = n;
	g_stacks_dirty = 0;
}

static char *stack_of(unsigned i)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	return g_stacks + i * (g_stack_size + page) + page;
}

static void fiber_init(emu_thread *t)
{
	uintptr_t top = ((uintptr_t)t->stack + t->stack_size) & ~(uintptr_t)15;
	uint64_t *sp = (uint64_t *)top;
	*--sp = 0;				/* fiber_main's return address: never used */
	*--sp = (uint64_t)(uintptr_t)fiber_main;
	for (int i = 0; i < 6; i++)
		*--sp = 0;			/* rbp rbx r12-r15 */
	*--sp = 0x1f80ull | (0x037full << 32);	/* default mxcsr, x87 control word */
	t->sp = sp;
}

static void switch_to_thread(emu_thread *t)
{
	void *fake = NULL;
	t_self = t;
	emu_cur = &t->pub;
	t->started = 1;
	if (__sanitizer_start_switch_fiber)
		__sanitizer_start_switch_fiber(&fake, t->stack, t->stack_size);
	emu_ctx_switch(&g_sched_sp, t->sp);
	if (__sanitizer_finish_switch_fiber)
		__sanitizer_finish_switch_fiber(fake, NULL, NULL);
	t_self = NULL;
	emu_cur = NULL;
	g_switches += 2;
}

/* Back to the scheduler; a dying thread is never resumed. */
static void switch_to_sched(emu_thread *t, int dying)
{
	if (__sanitizer_start_switch_fiber)
		__sanitizer_start_switch_fiber(dying ? NULL : &t->fake_stack, g_main_bottom, g_main_size);
	emu_ctx_switch(&t->sp, g_sched_sp);
	if (__sanitizer_finish_switch_fiber)
		__sanitizer_finish_switch_fiber(t->fake_stack, NULL, NULL);
}

static void runq_push(unsigned i) { S->runq.push_back(i); }

/* Records a kernel-side failure and leaves the thread for good. The message
 * may hold @PC0@ and @PC1@, replaced by source locations once back on the
 * scheduler's stack (symbolizing is too deep for a thread's stack). */
__attribute__((noreturn, format(printf, 4, 5)))
static void fail(cudaError_t e, const void *pc0, const void *pc1, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(g_pending, sizeof(g_pending), fmt, ap);
	va_end(ap);
	g_pending_pc[0] = pc0;
	g_pending_pc[1] = pc1;
	S->abort = e;
	switch_to_sched(t_self, 1);
	__builtin_unreachable();
}

static void cp_complete(emu_thread *t, int upto_group, const void *wait_pc);

static void fiber_main(void)
{
	if (__sanitizer_finish_switch_fiber)
		__sanitizer_finish_switch_fiber(NULL, &g_main_bottom, &g_main_size);
	emu_thread *t = t_self;
	S->d->invoke(S->d->fn, S->d->args);
	t = t_self;
	if (t->cp && !t->cp->empty())
		cp_complete(t, 1 << 30, NULL);
	t->state = T_EXITED;
	S->live--;
	switch_to_sched(t, 1);
	__builtin_unreachable();
}

/* ---- static shared memory: function-scope statics in the symbol table ---- */
static int dl_first(struct dl_phdr_info *info, size_t, void *data)
{
	*(uintptr_t *)data = info->dlpi_addr;
	return 1;
}

static int svar_excluded(const char *name)
{
	static const char *const skip[] = {"_ZZNSt", "_ZZNKSt", "_ZZSt", "_ZZN9__gnu_cxx", "_ZZNK9__gnu_cxx", "_ZZN10__cxxabi"};
	for (const char *p : skip)
		if (strncmp(name, p, strlen(p)) == 0)
			return 1;
	return 0;
}

/* "void k<8>(float*)::tile" -> "k<8>::tile" */
static std::string svar_pretty(const char *mangled)
{
	int st = 0;
	char *dm = abi::__cxa_demangle(mangled, NULL, NULL, &st);
	std::string d = (st == 0 && dm) ? dm : mangled;
	free(dm);
	size_t sep = d.rfind("::");
	if (sep == std::string::npos)
		return d;
	std::string var = d.substr(sep + 2), fn = d.substr(0, sep);
	size_t paren = fn.find('(');
	if (paren != std::string::npos)
		fn = fn.substr(0, paren);
	int depth = 0;
	size_t start = 0;
	for (size_t i = 0; i < fn.size(); i++) {
		if (fn[i] == '<')
			depth++;
		else if (fn[i] == '>')
			depth--;
		else if (fn[i] == ' ' && depth == 0)
			start = i + 1;
	}
	return fn.substr(start) + "::" + var;
}

static void svars_find(void)
{
	int fd = open("/proc/self/exe", O_RDONLY);
	if (fd < 0)
		return;
	struct stat st;
	if (fstat(fd, &st) != 0 || st.st_size < (off_t)sizeof(Elf64_Ehdr)) {
		close(fd);
		return;
	}
	size_t len = (size_t)st.st_size;
	const char *f = (const char *)mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (f == MAP_FAILED)
		return;
	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)f;
	uintptr_t base = 0;
	dl_iterate_phdr(dl_first, &base);
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh->e_shoff + (size_t)eh->e_shnum * sizeof(Elf64_Shdr) > len)
		goto out;
	{
		const Elf64_Shdr *sh = (const Elf64_Shdr *)(f + eh->e_shoff);
		for (unsigned i = 0; i < eh->e_shnum; i++) {
			if (sh[i].sh_type != SHT_SYMTAB || sh[i].sh_link >= eh->e_shnum)
				continue;
			const Elf64_Shdr *strs = &sh[sh[i].sh_link];
			if (sh[i].sh_offset + sh[i].sh_size > len || strs->sh_offset + strs->sh_size > len)
				continue;
			const Elf64_Sym *sym = (const Elf64_Sym *)(f + sh[i].sh_offset);
			size_t nsym = sh[i].sh_size / sizeof(Elf64_Sym);
			for (size_t k = 0; k < nsym; k++) {
				if (ELF64_ST_TYPE(sym[k].st_info) == STT_FUNC && sym[k].st_name < strs->sh_size &&
				    sym[k].st_value) {
					const char *fname = f + strs->sh_offset + sym[k].st_name;
					if (strncmp(fname, "_Z", 2) == 0)
						g_funcs[base + sym[k].st_value] = fname;
					continue;
				}
				if (ELF64_ST_TYPE(sym[k].st_info) != STT_OBJECT || sym[k].st_size == 0 ||
				    sym[k].st_shndx >= eh->e_shnum || sh[sym[k].st_shndx].sh_type != SHT_NOBITS ||
				    sym[k].st_name >= strs->sh_size)
					continue;
				const char *name = f + strs->sh_offset + sym[k].st_name;
				if (strncmp(name, "_ZZ", 3) != 0 || svar_excluded(name))
					continue;
				svar v;
				v.beg = base + sym[k].st_value;
				v.size = sym[k].st_size;
				v.span = (v.size + 7) & ~(size_t)7;
				v.restore = v.size;
				v.shadow_off = 0;
				v.name = svar_pretty(name);
				v.mangled = name;
				g_svars.push_back(v);
			}
		}
	}
out:
	munmap((void *)f, len);
	std::sort(g_svars.begin(), g_svars.end(), [](const svar &a, const svar &b) { return a.beg < b.beg; });
	size_t off = 0;
	for (svar &v : g_svars) {
		v.shadow_off = off;
		off += v.span;
		/* ASan can only mark a granule's first k bytes addressable: note
		 * how many bytes past the end were addressable before we poison,
		 * to give them back exactly afterwards. */
		if (__asan_address_is_poisoned)
			while (v.restore < v.span && !__asan_address_is_poisoned((const char *)v.beg + v.restore))
				v.restore++;
	}
	g_sshadow.assign(off, shadow());
	g_sshadow_n = off;
}

/* The shared variable holding [a, a+n), or the one whose end a overran. */
static svar *svar_at(uintptr_t a)
{
	if (g_svars.empty() || a < g_svars[0].beg)
		return NULL;
	size_t lo = 0, hi = g_svars.size();
	while (hi - lo > 1) {
		size_t mid = (lo + hi) / 2;
		if (g_svars[mid].beg <= a)
			lo = mid;
		else
			hi = mid;
	}
	svar *v = &g_svars[lo];
	return a < v->beg + v->span + 64 ? v : NULL;
}

/* ---- race detector ---- */
static int ordered(uint32_t stamp, unsigned t1, unsigned t2)
{
	if (stamp < S->bar_gen || t1 == t2)
		return 1;
	return (t1 >> 5) == (t2 >> 5) && S->pair_gen[t2 >> 5][t2 & 31][t1 & 31] > stamp;
}

static const char *acc_word(int write, int atomic)
{
	return atomic ? "atomically updates" : write ? "writes" : "reads";
}

/* Checks and records an access by thread t to n shadow cells. where names
 * the memory ("tile+24") for reports. */
static void detect(shadow *sh, size_t n, int write, int atomic, emu_thread *t, const void *pc, const char *where)
{
	char me[64], other[64];
	for (size_t i = 0; i < n; i++) {
		shadow *e = &sh[i];
		if (e->pending) {
			thread_name(t, me, sizeof(me));
			char iss[64];
			thread_name(&S->t[e->ptid], iss, sizeof(iss));
			fail(cudaErrorLaunchFailure, pc, e->ppc,
			     "cp.async race: %s %s %s (%zu bytes) at @PC0@ while the cp.async that %s issued at @PC1@ "
			     "is still in flight (no cp.async.wait_group has completed it)",
			     me, acc_word(write, atomic), where, n, iss);
		}
		int wlive = e->wgen >= S->bar_gen && e->wgen >= S->blk_gen;
		if (write || atomic) {
			if (wlive && !ordered(e->wgen, e->wtid, t->tid) && !(atomic && e->watomic)) {
				thread_name(t, me, sizeof(me));
				thread_name(&S->t[e->wtid], other, sizeof(other));
				fail(cudaErrorLaunchFailure, pc, e->wpc,
				     "data race on shared memory: %s %s %s (%zu bytes) at @PC0@; %s %s it at @PC1@ "
				     "in the same barrier interval (missing __syncthreads or __syncwarp?)",
				     me, acc_word(1, atomic), where, n, other, e->watomic ? "atomically updated" : "wrote");
			}
			if (e->rgen >= S->bar_gen && e->rgen >= S->blk_gen && (e->rmulti || !ordered(e->rgen, e->rtid, t->tid)) &&
			    (e->rtid != t->tid || e->rmulti)) {
				thread_name(t, me, sizeof(me));
				thread_name(&S->t[e->rtid], other, sizeof(other));
				fail(cudaErrorLaunchFailure, pc, e->rpc,
				     "data race on shared memory: %s %s %s (%zu bytes) at @PC0@; %s%s read it at @PC1@ "
				     "in the same barrier interval (missing __syncthreads or __syncwarp?)",
				     me, acc_word(1, atomic), where, n, other, e->rmulti ? " and other threads" : "");
			}
			e->wgen = g_gen;
			e->wtid = (uint16_t)t->tid;
			e->watomic = (uint8_t)atomic;
			e->wpc = pc;
			e->rgen = 0;
			e->rmulti = 0;
			continue;
		}
		if (e->wgen < S->blk_gen) {
			if (g_initcheck) {
				thread_name(t, me, sizeof(me));
				fail(cudaErrorLaunchFailure, pc, NULL,
				     "read of shared memory that no thread of this block has written yet: %s reads %s "
				     "(%zu bytes) at @PC0@ (uninitialised, or a missing __syncthreads before the read)",
				     me, where, n);
			}
		} else if (wlive && !ordered(e->wgen, e->wtid, t->tid)) {
			thread_name(t, me, sizeof(me));
			thread_name(&S->t[e->wtid], other, sizeof(other));
			fail(cudaErrorLaunchFailure, pc, e->wpc,
			     "data race on shared memory: %s reads %s (%zu bytes) at @PC0@; %s %s it at @PC1@ "
			     "in the same barrier interval (missing __syncthreads or __syncwarp?)",
			     me, where, n, other, e->watomic ? "atomically updated" : "wrote");
		}
		if (e->rgen >= S->bar_gen && e->rgen >= S->blk_gen && e->rtid != t->tid) {
			e->rmulti = 1;
			e->rgen = g_gen;
		} else {
			e->rgen = g_gen;
			e->rtid = (uint16_t)t->tid;
			e->rpc = pc;
			e->rmulti = 0;
		}
	}
}

/* Looks up [a, a+n) in shared memory. Returns its shadow cells and a name for
 * reports, NULL if the address is not shared; reports out-of-bounds accesses
 * (fail does not return). */
static shadow *shared_lookup(uintptr_t a, size_t n, int write, const void *pc, char *where, size_t wn)
{
	uintptr_t d = (uintptr_t)g_dyn;
	if (g_dyn && a >= d && a < d + g_dyn_cap + DYN_REDZONE) {
		size_t off = a - d;
		if (off + n > g_dyn_size)
			fail(cudaErrorIllegalAddress, pc, NULL,
			     "out-of-bounds %s of dynamic shared memory: %zu bytes at offset %zu at @PC0@, "
			     "but the launch gave %zu bytes", write ? "write" : "read", n, off, g_dyn_size);
		snprintf(where, wn, "dynamic shared memory +%zu", off);
		return &g_dshadow[off];
	}
	svar *v = svar_at(a);
	if (!v)
		return NULL;
	size_t off = a - v->beg;
	if (off + n > v->size)
		fail(cudaErrorIllegalAddress, pc, NULL,
		     "out-of-bounds %s of shared array %s: %zu bytes at byte offset %zu at @PC0@, but it has %zu bytes",
		     write ? "write" : "read", v->name.c_str(), n, off, v->size);
	snprintf(where, wn, "%s+%zu", v->name.c_str(), off);
	return &g_sshadow[v->shadow_off + off];
}

static int is_shared(uintptr_t a)
{
	uintptr_t d = (uintptr_t)g_dyn;
	if (g_dyn && a >= d && a < d + g_dyn_cap + DYN_REDZONE)
		return 1;
	svar *v = svar_at(a);
	return v && a < v->beg + v->span;
}

/* An access to poisoned memory that is not shared: say which device
 * allocation it missed, if any. Returns only when it is none of ours. */
static void global_bad_access(uintptr_t a, size_t n, int write, const void *pc)
{
	auto it = g_allocs.upper_bound(a);
	if (it != g_allocs.end() && a + n > it->first - 256 && a < it->first)
		fail(cudaErrorIllegalAddress, pc, it->second.pc,
		     "out-of-bounds global %s: %zu bytes at %zu bytes before a %zu-byte device allocation (made at @PC1@), at @PC0@",
		     write ? "write" : "read", n, (size_t)(it->first - a), it->second.size);
	if (it != g_allocs.begin()) {
		--it;
		uintptr_t end = it->first + it->second.size;
		if (a >= it->first && a < end + 1024)
			fail(cudaErrorIllegalAddress, pc, it->second.pc,
			     "out-of-bounds global %s: %zu bytes at byte offset %zu of a %zu-byte device allocation "
			     "(made at @PC1@), i.e. %zu bytes past its end, at @PC0@",
			     write ? "write" : "read", n, (size_t)(a - it->first), it->second.size,
			     (size_t)(a + n - end));
	}
	for (unsigned i = 0; i < 64 && i < g_nfreed; i++) {
		freed_alloc *fa = &g_freed[i];
		if (a >= fa->beg && a < fa->beg + fa->size)
			fail(cudaErrorIllegalAddress, pc, NULL,
			     "use of freed device memory: %zu-byte %s at offset %zu of a %zu-byte allocation already "
			     "given to cudaFree, at @PC0@", n, write ? "write" : "read", (size_t)(a - fa->beg), fa->size);
	}
}

/* Every poisoned access from instrumented code lands here. */
static int on_poisoned(uintptr_t a, size_t n, int write, const void *pc)
{
	emu_thread *t = t_self;
	if (!t || !S) {
		/* Host code touching a function-scope static during a launch
		 * (another host thread): not a kernel access. */
		return S && is_shared(a);
	}
	char where[160];
	shadow *sh = shared_lookup(a, n, write, pc, where, sizeof(where));
	if (sh) {
		detect(sh, n, write, 0, t, pc, where);
		return 1;
	}
	if (watch_record(a, n, write))
		return 1;
	global_bad_access(a, n, write, pc);
	return 0;
}

typedef void (*report_fn)(uintptr_t);
typedef void (*report_n_fn)(uintptr_t, uintptr_t);

#define EMU_HOOK(kind, size, write) \
	extern "C" void __asan_report_##kind##size##_noabort(uintptr_t a) \
	{ \
		static report_fn real; \
		if (on_poisoned(a, size, write, __builtin_return_address(0))) \
			return; \
		if (!real) \
			real = (report_fn)dlsym(RTLD_NEXT, "__asan_report_" #kind #size "_noabort"); \
		if (real) \
			real(a); \
	}
EMU_HOOK(load, 1, 0) EMU_HOOK(load, 2, 0) EMU_HOOK(load, 4, 0) EMU_HOOK(load, 8, 0) EMU_HOOK(load, 16, 0)
EMU_HOOK(store, 1, 1) EMU_HOOK(store, 2, 1) EMU_HOOK(store, 4, 1) EMU_HOOK(store, 8, 1) EMU_HOOK(store, 16, 1)

extern "C" void __asan_report_load_n_noabort(uintptr_t a, uintptr_t n)
{
	static report_n_fn real;
	if (on_poisoned(a, n, 0, __builtin_return_address(0)))
		return;
	if (!real)
		real = (report_n_fn)dlsym(RTLD_NEXT, "__asan_report_load_n_noabort");
	if (real)
		real(a, n);
}

extern "C" void __asan_report_store_n_noabort(uintptr_t a, uintptr_t n)
{
	static report_n_fn real;
	if (on_poisoned(a, n, 1, __builtin_return_address(0)))
		return;
	if (!real)
		real = (report_n_fn)dlsym(RTLD_NEXT, "__asan_report_store_n_noabort");
	if (real)
		real(a, n);
}

/* ---- scheduling ---- */
/* "threads 0-15 wait at __syncthreads at x.cu:12; thread 16 exited": the
 * block's threads grouped by what they wait at, for deadlock reports. */
static void describe_threads(char *buf, size_t n)
{
	std::vector<unsigned> leaders;	/* first thread of each distinct state */
	std::vector<std::vector<unsigned>> members;
	for (unsigned i = 0; i < S->n; i++) {
		emu_thread *t = &S->t[i];
		size_t k = 0;
		for (; k < leaders.size(); k++) {
			emu_thread *l = &S->t[leaders[k]];
			if (l->state == t->state && (t->state == T_EXITED || t->state == T_RUNNABLE ||
			    (l->wait_pc == t->wait_pc && (t->state != T_WARP || l->wmask == t->wmask) &&
			     (t->state != T_SPIN || (l->spin_addr == t->spin_addr && l->spin_value == t->spin_value)))))
				break;
		}
		if (k == leaders.size()) {
			leaders.push_back(i);
			members.emplace_back();
		}
		members[k].push_back(i);
	}
	size_t len = 0;
	buf[0] = 0;
	for (size_t k = 0; k < leaders.size() && k < 6 && len < n; k++) {
		emu_thread *t = &S->t[leaders[k]];
		std::vector<unsigned> &m = members[k];
		std::string who;
		int runs = 0;
		for (size_t a = 0; a < m.size() && runs < 4; runs++) {
			size_t b = a;
			while (b + 1 < m.size() && m[b + 1] == m[b] + 1)
				b++;
			who += (runs ? "," : "") + std::to_string(m[a]) + (b > a ? "-" + std::to_string(m[b]) : "");
			a = b + 1;
		}
		if (runs == 4 && m.size() > 0)
			who += ",...";
		char loc[512] = "";
		if (t->state == T_BARRIER || t->state == T_WARP || t->state == T_SPIN)
			symbolize(t->wait_pc, loc, sizeof(loc));
		const char *sep = k ? "; " : "";
		const char *noun = m.size() > 1 ? "threads" : "thread";
		if (t->state == T_EXITED)
			len += snprintf(buf + len, n - len, "%s%s %s exited", sep, noun, who.c_str());
		else if (t->state == T_BARRIER)
			len += snprintf(buf + len, n - len, "%s%s %s wait at __syncthreads at %s", sep, noun, who.c_str(), loc);
		else if (t->state == T_WARP)
			len += snprintf(buf + len, n - len, "%s%s %s wait at %s (mask 0x%08x) at %s", sep, noun, who.c_str(),
					t->wait_what, t->wmask, loc);
		else if (t->state == T_SPIN)
			len += snprintf(buf + len, n - len, "%s%s %s wait at %s for the flag at %p to reach %d (it holds %d)",
					sep, noun, who.c_str(), loc, (const void *)t->spin_addr, t->spin_value, *t->spin_addr);
		else
			len += snprintf(buf + len, n - len, "%s%s %s runnable", sep, noun, who.c_str());
	}
}

/* Every live thread is at __syncthreads: check they agree, then release. */
static int release_barrier(char *msg, size_t mn)
{
	emu_thread *first = NULL;
	int count = 0, all = 1, any = 0;
	for (unsigned i = 0; i < S->n; i++) {
		emu_thread *t = &S->t[i];
		if (t->state != T_BARRIER)
			continue;
		if (!first)
			first = t;
		if (t->wait_pc != first->wait_pc || t->bar_op != first->bar_op) {
			char a[512], b[512];
			symbolize(first->wait_pc, a, sizeof(a));
			symbolize(t->wait_pc, b, sizeof(b));
			if (strcmp(a, b) != 0 || t->bar_op != first->bar_op) {
				char who[1024];
				describe_threads(who, sizeof(who));
				snprintf(msg, mn, "barrier divergence: threads of the block wait at different barriers "
					 "(%s and %s): %s", a, b, who);
				return -1;
			}
		}
		count += t->bar_pred != 0;
		all &= t->bar_pred != 0;
		any |= t->bar_pred != 0;
	}
	if (S->live < S->n) {
		char loc[512], who[1024];
		symbolize(first->wait_pc, loc, sizeof(loc));
		describe_threads(who, sizeof(who));
		snprintf(msg, mn, "barrier divergence: %u of %u threads exited without reaching __syncthreads at %s, "
			 "which the others wait at forever: %s", S->n - S->live, S->n, loc, who);
		return -1;
	}
	g_gen++;
	S->bar_gen = g_gen;
	for (unsigned i = 0; i < S->n; i++) {
		emu_thread *t = &S->t[i];
		if (t->state != T_BARRIER)
			continue;
		t->bar_result = t->bar_op == EMU_BAR_COUNT ? count : t->bar_op == EMU_BAR_AND ? all :
				t->bar_op == EMU_BAR_OR ? any : 0;
		t->state = T_RUNNABLE;
		runq_push(i);
	}
	S->nbar = 0;
	return 0;
}

static unsigned pick_next(void)
{
	if (g_seed == 0) {
		unsigned i = S->runq[S->runq_head++];
		if (S->runq_head == S->runq.size()) {
			S->runq.clear();
			S->runq_head = 0;
		}
		return i;
	}
	size_t k = (size_t)(rng_next(&S->rng) % S->runq.size());
	unsigned i = S->runq[k];
	S->runq[k] = S->runq.back();
	S->runq.pop_back();
	return i;
}

/* Threads of block s waiting on a flag that now holds their value become
 * runnable (when wake); returns how many can. */
static unsigned spinners_ready(sched *s, int wake)
{
	unsigned k = 0;
	for (unsigned i = 0; i < s->n && s->nspin; i++) {
		emu_thread *t = &s->t[i];
		if (t->state != T_SPIN || *t->spin_addr < t->spin_value)
			continue;
		k++;
		if (wake) {
			t->state = T_RUNNABLE;
			s->nspin--;
			s->runq.push_back(i);
		}
	}
	return k;
}

/* The block paused: it waits on other blocks, or gave way after a release or
 * a barrier. */
static const int BLOCK_PAUSED = -1;
static unsigned g_resident_now;	/* blocks this launch may have started at once */

/* Runs the current block until it ends or pauses. Returns 0, BLOCK_PAUSED,
 * or a cudaError_t with the message in msg. */
static int run_block(char *msg, size_t mn)
{
	for (;;) {
		while (S->runq.size() > S->runq_head && !S->abort) {
			switch_to_thread(&S->t[pick_next()]);
			if (S->preempt && !S->abort) {
				S->preempt = 0;
				return BLOCK_PAUSED;
			}
		}
		if (S->abort)
			return S->abort;
		if (S->live == 0)
			return 0;
		if (S->nspin) {		/* no thread runs: the waits decide */
			if (spinners_ready(S, 1))
				continue;
			return BLOCK_PAUSED;
		}
		if (S->nbar == S->live) {
			if (release_barrier(msg, mn) != 0)
				return cudaErrorLaunchTimeout;
			/* other started blocks may run between two barrier
			 * intervals of this one, as on a GPU's other SMs */
			if (g_resident_now > 1 && g_seed != 0 && (rng_next(&S->rng) & 3) == 0)
				return BLOCK_PAUSED;
			continue;
		}
		char who[1500];
		describe_threads(who, sizeof(who));
		snprintf(msg, mn, "%s: no thread can proceed (on a GPU this hangs): %s",
			 S->nbar ? "barrier divergence" : "warp collective deadlock", who);
		return cudaErrorLaunchTimeout;
	}
}

/* ---- device-side entry points ---- */
static int barrier_at(int op, int pred, const void *pc)
{
	emu_thread *t = t_self;
	t->state = T_BARRIER;
	t->bar_op = op;
	t->bar_pred = pred;
	t->wait_pc = pc;
	t->wait_what = "__syncthreads";
	S->nbar++;
	switch_to_sched(t, 0);
	return t->bar_result;
}

extern "C" void emu_syncthreads(void) { barrier_at(EMU_BAR_PLAIN, 0, __builtin_return_address(0)); }
extern "C" int emu_syncthreads_op(int pred, int op) { return barrier_at(op, pred, __builtin_return_address(0)); }

extern "C" void emu_yield(void)
{
	emu_thread *t = t_self;
	runq_push(t->tid);
	switch_to_sched(t, 0);
}

extern "C" void emu_spin_wait(const volatile int *flag, int value)
{
	emu_thread *t = t_self;
	t->state = T_SPIN;
	t->spin_addr = flag;
	t->spin_value = value;
	t->wait_pc = __builtin_return_address(0);
	t->wait_what = "flag_wait_geq";
	S->nspin++;
	switch_to_sched(t, 0);
}

/* After a release: on a coin (never with seed 0), give the other started
 * blocks a turn now, so that a waiter may run before the releaser goes on. */
extern "C" void emu_released(void)
{
	if (g_resident_now > 1 && g_seed != 0 && (rng_next(&S->rng) & 1)) {
		S->preempt = 1;
		emu_yield();
	}
}

extern "C" void emu_trap(void)
{
	char me[64];
	thread_name(t_self, me, sizeof(me));
	fail(cudaErrorLaunchFailure, __builtin_return_address(0), NULL, "__trap() by %s at @PC0@", me);
}

extern "C" void emu_report_error(const char *what)
{
	char me[64];
	thread_name(t_self, me, sizeof(me));
	fail(cudaErrorLaunchFailure, __builtin_return_address(0), NULL, "%s (%s at @PC0@)", what, me);
}

extern "C" unsigned emu_lane(void) { return t_self->lane; }

static unsigned warp_exists_mask(unsigned w)
{
	unsigned first = w * 32, cnt = S->n - first < 32 ? S->n - first : 32;
	return cnt == 32 ? 0xffffffffu : ((1u << cnt) - 1);
}

extern "C" unsigned emu_activemask(void)
{
	unsigned w = t_self->warp, m = 0;
	for (unsigned l = 0; l < 32 && w * 32 + l < S->n; l++)
		if (S->t[w * 32 + l].state != T_EXITED)
			m |= 1u << l;
	return m;
}

static void collective_at(unsigned mask, emu_warp_fn fn, void *in, void *out, const char *what, const void *pc)
{
	emu_thread *t = t_self;
	unsigned w = t->warp, bit = 1u << t->lane;
	if (!(mask & bit))
		fail(cudaErrorIllegalInstruction, pc, NULL,
		     "%s at @PC0@: lane %u calls it with mask 0x%08x, which does not include the lane itself",
		     what, t->lane, mask);
	if (mask & ~warp_exists_mask(w))
		fail(cudaErrorIllegalInstruction, pc, NULL,
		     "%s at @PC0@: mask 0x%08x names lanes that do not exist (the block has %u threads)", what, mask, S->n);
	t->wmask = mask;
	t->wfn = fn;
	t->win = in;
	t->wout = out;
	t->wait_pc = pc;
	t->wait_what = what;
	S->warp_arrived[w] |= bit;
	if ((S->warp_arrived[w] & mask) != mask) {
		t->state = T_WARP;
		switch_to_sched(t, 0);
		return;
	}
	void *ins[32], *outs[32];
	emu_thread *base = &S->t[w * 32];
	for (unsigned l = 0; l < 32; l++) {
		ins[l] = outs[l] = NULL;
		if (!(mask >> l & 1))
			continue;
		emu_thread *u = &base[l];
		if (u->wfn != fn || u->wmask != mask)
			fail(cudaErrorIllegalInstruction, pc, u->wait_pc,
			     "warp collectives do not match: lane %u is at %s (mask 0x%08x) at @PC0@ but lane %u is at %s "
			     "(mask 0x%08x) at @PC1@", t->lane, what, mask, l, u->wait_what, u->wmask);
		ins[l] = u->win;
		outs[l] = u->wout;
	}
	fn(mask, ins, outs);
	S->warp_arrived[w] &= ~mask;
	for (unsigned l = 0; l < 32; l++) {
		if (!(mask >> l & 1) || l == t->lane)
			continue;
		base[l].state = T_RUNNABLE;
		runq_push(w * 32 + l);
	}
	/* the last lane to arrive goes on without a switch, but the others
	 * should not always trail it: let the scheduler choose */
	if (g_seed != 0 && (rng_next(&S->rng) & 1))
		emu_yield();
}

extern "C" void emu_warp_collective(unsigned mask, emu_warp_fn fn, void *in, void *out, const char *what)
{
	collective_at(mask, fn, in, out, what, __builtin_return_address(0));
}

static void syncwarp_fn(unsigned mask, void *const *, void *const *)
{
	unsigned w = t_self->warp;
	g_gen++;
	for (unsigned i = 0; i < 32; i++)
		if (mask >> i & 1)
			for (unsigned j = 0; j < 32; j++)
				if (mask >> j & 1)
					S->pair_gen[w][i][j] = g_gen;
}

extern "C" void emu_syncwarp(unsigned mask)
{
	collective_at(mask, syncwarp_fn, NULL, NULL, "__syncwarp", __builtin_return_address(0));
}

/* shfl.sync as the PTX ISA defines it, with c = clamp | segmask << 8. */
static void shfl_fn(unsigned mask, void *const *in, void *const *out, int mode)
{
	for (unsigned lane = 0; lane < 32; lane++) {
		if (!(mask >> lane & 1))
			continue;
		emu_warp_arg *a = (emu_warp_arg *)in[lane];
		int b = a->b, cval = a->c & 0x1f, seg = (a->c >> 8) & 0x1f;
		int max_lane = ((int)lane & seg) | (cval & ~seg), min_lane = (int)lane & seg;
		int j, ok;
		switch (mode) {
		case EMU_SHFL_UP:
			j = (int)lane - b;
			ok = j >= max_lane;
			break;
		case EMU_SHFL_DOWN:
			j = (int)lane + b;
			ok = j <= max_lane;
			break;
		case EMU_SHFL_BFLY:
			j = (int)lane ^ b;
			ok = j <= max_lane;
			break;
		default:
			j = min_lane | (b & 0x1f & ~seg);
			ok = j <= max_lane;
			break;
		}
		if (!ok)
			j = (int)lane;
		if (!(mask >> j & 1)) {
			emu_thread *me = &S->t[t_self->warp * 32 + lane];
			fail(cudaErrorIllegalInstruction, me->wait_pc, NULL,
			     "%s at @PC0@: lane %u reads lane %d, which is not in the mask 0x%08x (its value is undefined)",
			     me->wait_what, lane, j, mask);
		}
		*(uint64_t *)out[lane] = ((emu_warp_arg *)in[j])->v;
	}
}
static void shfl_idx_fn(unsigned m, void *const *i, void *const *o) { shfl_fn(m, i, o, EMU_SHFL_IDX); }
static void shfl_up_fn(unsigned m, void *const *i, void *const *o) { shfl_fn(m, i, o, EMU_SHFL_UP); }
static void shfl_down_fn(unsigned m, void *const *i, void *const *o) { shfl_fn(m, i, o, EMU_SHFL_DOWN); }
static void shfl_bfly_fn(unsigned m, void *const *i, void *const *o) { shfl_fn(m, i, o, EMU_SHFL_BFLY); }

extern "C" uint64_t emu_shfl(unsigned mask, uint64_t v, int b, int c, int mode)
{
	static const emu_warp_fn fns[] = {shfl_idx_fn, shfl_up_fn, shfl_down_fn, shfl_bfly_fn};
	static const char *const names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};
	const void *pc = __builtin_return_address(0);
	int seg = c >> 8, width = 32 - seg;
	if (seg < 0 || seg > 31 || (width & (width - 1)) != 0)
		fail(cudaErrorIllegalInstruction, pc, NULL, "%s at @PC0@: width %d is not a power of two from 1 to 32",
		     names[mode], width);
	emu_warp_arg in = {v, b, c};
	uint64_t out = 0;
	collective_at(mask, fns[mode], &in, &out, names[mode], pc);
	return out;
}

static void vote_fn(unsigned mask, void *const *in, void *const *out)
{
	unsigned ballot = 0;
	int op = (int)((emu_warp_arg *)in[__builtin_ctz(mask)])->b;
	for (unsigned l = 0; l < 32; l++)
		if ((mask >> l & 1) && ((emu_warp_arg *)in[l])->v)
			ballot |= 1u << l;
	unsigned r = op == EMU_VOTE_BALLOT ? ballot : op == EMU_VOTE_ALL ? (ballot == mask) : (ballot != 0);
	for (unsigned l = 0; l < 32; l++)
		if (mask >> l & 1)
			*(uint64_t *)out[l] = r;
}

extern "C" unsigned emu_vote(unsigned mask, int pred, int op)
{
	static const char *const names[] = {"__all_sync", "__any_sync", "__ballot_sync"};
	emu_warp_arg in = {(uint64_t)(pred != 0), op, 0};
	uint64_t out = 0;
	collective_at(mask, vote_fn, &in, &out, names[op], __builtin_return_address(0));
	return (unsigned)out;
}

static void reduce_fn(unsigned mask, void *const *in, void *const *out)
{
	int op = ((emu_warp_arg *)in[__builtin_ctz(mask)])->b;
	uint32_t r = 0;
	int first = 1;
	for (unsigned l = 0; l < 32; l++) {
		if (!(mask >> l & 1))
			continue;
		uint32_t v = (uint32_t)((emu_warp_arg *)in[l])->v;
		if (first) {
			r = v;
			first = 0;
			continue;
		}
		switch (op) {
		case EMU_RED_ADD: r += v; break;
		case EMU_RED_MIN: r = v < r ? v : r; break;
		case EMU_RED_MAX: r = v > r ? v : r; break;
		case EMU_RED_SMIN: r = (int32_t)v < (int32_t)r ? v : r; break;
		case EMU_RED_SMAX: r = (int32_t)v > (int32_t)r ? v : r; break;
		case EMU_RED_AND: r &= v; break;
		case EMU_RED_OR: r |= v; break;
		default: r ^= v; break;
		}
	}
	for (unsigned l = 0; l < 32; l++)
		if (mask >> l & 1)
			*(uint64_t *)out[l] = r;
}

extern "C" unsigned emu_reduce(unsigned mask, unsigned v, int op)
{
	emu_warp_arg in = {v, op, 0};
	uint64_t out = 0;
	collective_at(mask, reduce_fn, &in, &out, "__reduce_*_sync", __builtin_return_address(0));
	return (unsigned)out;
}

static void match_fn(unsigned mask, void *const *in, void *const *out)
{
	int all = ((emu_warp_arg *)in[__builtin_ctz(mask)])->b;
	unsigned same_all = mask;
	for (unsigned l = 0; l < 32; l++) {
		if (!(mask >> l & 1))
			continue;
		unsigned m = 0;
		for (unsigned k = 0; k < 32; k++)
			if ((mask >> k & 1) && ((emu_warp_arg *)in[k])->v == ((emu_warp_arg *)in[l])->v)
				m |= 1u << k;
		if (m != mask)
			same_all = 0;
		*(uint64_t *)out[l] = m;
	}
	if (all)
		for (unsigned l = 0; l < 32; l++)
			if (mask >> l & 1)
				*(uint64_t *)out[l] = same_all;
}

extern "C" unsigned emu_match(unsigned mask, uint64_t v, int all, int *pred)
{
	emu_warp_arg in = {v, all, 0};
	uint64_t out = 0;
	collective_at(mask, match_fn, &in, &out, all ? "__match_all_sync" : "__match_any_sync", __builtin_return_address(0));
	if (pred)
		*pred = out != 0;
	return (unsigned)out;
}

/* ---- memory done by the runtime on a lane's behalf ---- */
extern "C" void emu_lane_load(unsigned lane, void *dst, const void *src, size_t n, const char *what)
{
	emu_thread *u = &S->t[t_self->warp * 32 + lane];
	char where[160];
	if ((n == 4 || n == 8 || n == 16) && (uintptr_t)src % n)
		fail(cudaErrorMisalignedAddress, u->wait_pc, NULL, "%s at @PC0@: lane %u's address %p is not %zu-byte aligned",
		     what, lane, src, n);
	if (!is_shared((uintptr_t)src))
		fail(cudaErrorIllegalAddress, u->wait_pc, NULL, "%s at @PC0@: lane %u's address %p is not in shared memory",
		     what, lane, src);
	shadow *sh = shared_lookup((uintptr_t)src, n, 0, u->wait_pc, where, sizeof(where));
	detect(sh, n, 0, 0, u, u->wait_pc, where);
	raw_copy(dst, src, n);
}

extern "C" void emu_atomic_begin(void *p, size_t n)
{
	const void *pc = __builtin_return_address(0);
	char where[160];
	if ((uintptr_t)p % n)
		fail(cudaErrorMisalignedAddress, pc, NULL, "misaligned atomic: %zu-byte atomic at %p at @PC0@", n, p);
	if (is_shared((uintptr_t)p)) {
		shadow *sh = shared_lookup((uintptr_t)p, n, 1, pc, where, sizeof(where));
		detect(sh, n, 1, 1, t_self, pc, where);
		return;
	}
	if (__asan_region_is_poisoned && __asan_region_is_poisoned(p, n) && !watch_record((uintptr_t)p, n, 1)) {
		global_bad_access((uintptr_t)p, n, 1, pc);
		fail(cudaErrorIllegalAddress, pc, NULL, "atomic on invalid address %p at @PC0@", p);
	}
}

extern "C" void emu_raw_load(void *dst, const void *src, size_t n) { raw_copy(dst, src, n); }
extern "C" void emu_raw_store(void *dst, const void *src, size_t n) { raw_copy(dst, src, n); }

/* ---- cp.async: the source is read at issue, as the hardware may; the
 * shared destination is written when a wait_group covers the copy, as late as
 * the hardware may. A source rewritten between the two is a race (the
 * hardware may have read either value), reported at the wait. ---- */
extern "C" void emu_cp_async(void *smem, const void *gmem, int cp_size, int src_size)
{
	const void *pc = __builtin_return_address(0);
	emu_thread *t = t_self;
	char where[160];
	if (cp_size != 4 && cp_size != 8 && cp_size != 16)
		fail(cudaErrorIllegalInstruction, pc, NULL, "cp.async at @PC0@: size %d is not 4, 8 or 16", cp_size);
	if (src_size < 0 || src_size > cp_size)
		fail(cudaErrorIllegalInstruction, pc, NULL, "cp.async at @PC0@: src-size %d exceeds cp-size %d", src_size, cp_size);
	if (!is_shared((uintptr_t)smem))
		fail(cudaErrorIllegalAddress, pc, NULL, "cp.async at @PC0@: destination %p is not shared memory", smem);
	if ((uintptr_t)smem % cp_size || (uintptr_t)gmem % cp_size)
		fail(cudaErrorMisalignedAddress, pc, NULL,
		     "cp.async at @PC0@: %d-byte copy from %p to %p is not %d-byte aligned", cp_size, gmem, smem, cp_size);
	if (src_size && __asan_region_is_poisoned && __asan_region_is_poisoned((void *)gmem, (size_t)src_size) &&
	    !watch_record((uintptr_t)gmem, (size_t)src_size, 0)) {
		global_bad_access((uintptr_t)gmem, (size_t)src_size, 0, pc);
		fail(cudaErrorIllegalAddress, pc, NULL, "cp.async at @PC0@: source %p is not valid memory", gmem);
	}
	shadow *sh = shared_lookup((uintptr_t)smem, (size_t)cp_size, 1, pc, where, sizeof(where));
	for (int i = 0; i < cp_size; i++) {
		if (sh[i].pending) {
			char other[64];
			thread_name(&S->t[sh[i].ptid], other, sizeof(other));
			fail(cudaErrorLaunchFailure, pc, sh[i].ppc,
			     "cp.async race: cp.async at @PC0@ targets %s, which a cp.async by %s at @PC1@ is still writing",
			     where, other);
		}
		sh[i].pending = 1;
		sh[i].ptid = (uint16_t)t->tid;
		sh[i].ppc = pc;
	}
	if (!t->cp)
		t->cp = new std::vector<cp_entry>();
	cp_entry e = {smem, gmem, cp_size, src_size, -1, pc, {0}};
	raw_copy(e.data, gmem, (size_t)src_size);
	t->cp->push_back(e);
}

extern "C" void emu_cp_async_commit(void)
{
	emu_thread *t = t_self;
	t->cp_groups++;
	if (t->cp)
		for (cp_entry &e : *t->cp)
			if (e.group < 0)
				e.group = t->cp_groups;
}

/* Completes every committed copy of group <= upto_group (at the wait at
 * wait_pc; NULL: the thread's exit). */
static void cp_complete(emu_thread *t, int upto_group, const void *wait_pc)
{
	std::vector<cp_entry> keep;
	char where[160];
	for (cp_entry &e : *t->cp) {
		if (e.group < 0 || e.group > upto_group) {
			keep.push_back(e);
			continue;
		}
		shadow *sh = shared_lookup((uintptr_t)e.dst, (size_t)e.size, 1, e.pc, where, sizeof(where));
		for (int i = 0; i < e.size; i++)
			sh[i].pending = 0;
		detect(sh, (size_t)e.size, 1, 0, t, e.pc, where);
		unsigned char now[16] = {0};
		raw_copy(now, e.src, (size_t)e.src_size);
		if (memcmp(now, e.data, (size_t)e.src_size) != 0)
			fail(cudaErrorLaunchFailure, e.pc, wait_pc,
			     "cp.async race: the source %p of the cp.async at @PC0@ was rewritten while the copy was in flight "
			     "(before the wait_group at @PC1@ that completes it): the hardware may have read either value",
			     e.src);
		raw_copy(e.dst, e.data, (size_t)e.size);
	}
	t->cp->swap(keep);
}

extern "C" void emu_cp_async_wait(int n)
{
	emu_thread *t = t_self;
	if (t->cp && !t->cp->empty())
		cp_complete(t, t->cp_groups - n, __builtin_return_address(0));
}

extern "C" void *emu_dynamic_shared(void) { return g_dyn; }

extern "C" long long emu_clock64(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* ---- streams: queues, ordering, and the cross-stream race check ----
 * Every piece of stream work (a launch, an async copy or memset, a
 * collective of the emulated NCCL) is an operation with a vector clock:
 * clock[k] is the last operation of stream k ordered before it, by stream
 * order, events (record, then wait or synchronize), host synchronisation and
 * the legacy default stream's rules (it waits for, and is waited for by, the
 * streams created without cudaStreamNonBlocking). Two operations on
 * different streams, neither ordered before the other, may run in either
 * order or at once on a GPU; when they touch a common byte and one writes
 * it, the emulator reports a cross-stream race naming both.
 *
 * Launches, copies and memsets run when issued, after the queued work they
 * are ordered after: the emulated libraries (cuBLASLt, cuDNN's recurrent op)
 * read device memory when called, so the stream a library call is on must
 * be current. Work queued with emu_stream_enqueue (the emulated NCCL's
 * collectives) runs either when issued or, on a coin drawn from
 * ANATOMY_EMU_SEED, only once something ordered after it needs it (seed 0:
 * always when issued); so a missing wait shows up as wrong numbers too, not
 * only as a report. A kernel's bytes are the ones it touched: while it runs, the
 * allocations its pointer arguments point into are poisoned, and each access
 * (seen through AddressSanitizer, as shared memory is) is recorded. That
 * happens only once two streams are in use, so one-stream programs pay
 * nothing. */
struct srange { uintptr_t lo, hi; };
struct stream_op {
	int stream;
	uint64_t seq;
	std::vector<uint64_t> vc;
	std::vector<srange> rd, wr;	/* sorted, disjoint */
	std::string what;
};
struct pending_op {
	uint64_t seq;
	std::vector<uint64_t> vc;
	int (*fn)(void *);
	void *ctx;
};
struct emu_stream {
	unsigned flags;
	int id, alive;
	uint64_t seq;			/* operations issued */
	std::vector<uint64_t> vc;	/* the clock of its last operation */
	std::vector<pending_op> q;	/* queued, oldest first */
	size_t qhead;
};
struct emu_event {
	double t;
	int recorded;
	std::vector<uint64_t> vc;	/* the recording stream's clock at the record */
};

static pthread_mutex_t g_slock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static emu_stream g_legacy_stream = {0, 0, 1, 0, {}, {}, 0};
static std::vector<emu_stream *> g_stream_ids = {&g_legacy_stream};
static std::vector<uint64_t> g_host_vc;	/* what the host has waited for */
static std::vector<stream_op> g_hist;	/* operations that may still race */
static int g_legacy_used, g_nstreams;
static unsigned g_issued;
/* the kernel being recorded: its watched allocations and what it touched */
static std::vector<srange> g_watch, g_acc_rd, g_acc_wr;

static uint64_t vc_at(const std::vector<uint64_t> &v, int k) { return (size_t)k < v.size() ? v[k] : 0; }

static void vc_join(std::vector<uint64_t> &a, const std::vector<uint64_t> &b)
{
	if (a.size() < b.size())
		a.resize(b.size());
	for (size_t i = 0; i < b.size(); i++)
		a[i] = std::max(a[i], b[i]);
}

static emu_stream *stream_of(cudaStream_t s) { return s ? s : &g_legacy_stream; }

static const char *stream_name(int id, char *buf, size_t n)
{
	if (id)
		snprintf(buf, n, "stream %d", id);
	else
		snprintf(buf, n, "the legacy default stream");
	return buf;
}

/* s's clock joined with what its next operation must come after. */
static void stream_deps(emu_stream *s)
{
	vc_join(s->vc, g_host_vc);
	if (s == &g_legacy_stream) {
		for (emu_stream *b : g_stream_ids)
			if (b && b != s && b->alive && !(b->flags & cudaStreamNonBlocking))
				vc_join(s->vc, b->vc);
	} else if (!(s->flags & cudaStreamNonBlocking)) {
		vc_join(s->vc, g_legacy_stream.vc);
	}
}

/* A new operation on s: its clock is s's afterwards. */
static void stream_advance(emu_stream *s)
{
	stream_deps(s);
	s->seq++;
	if (s->vc.size() <= (size_t)s->id)
		s->vc.resize(s->id + 1);
	s->vc[s->id] = s->seq;
	if (s == &g_legacy_stream)
		g_legacy_used = 1;
}

static void ranges_norm(std::vector<srange> &v)
{
	std::sort(v.begin(), v.end(), [](const srange &a, const srange &b) { return a.lo < b.lo; });
	size_t k = 0;
	for (size_t i = 0; i < v.size(); i++) {
		if (k && v[i].lo <= v[k - 1].hi)
			v[k - 1].hi = std::max(v[k - 1].hi, v[i].hi);
		else
			v[k++] = v[i];
	}
	v.resize(k);
}

static int ranges_meet(const std::vector<srange> &a, const std::vector<srange> &b, uintptr_t *at)
{
	size_t i = 0, j = 0;
	while (i < a.size() && j < b.size()) {
		if (a[i].hi <= b[j].lo) {
			i++;
		} else if (b[j].hi <= a[i].lo) {
			j++;
		} else {
			*at = std::max(a[i].lo, b[j].lo);
			return 1;
		}
	}
	return 0;
}

static cudaError_t take_pending(void)
{
	cudaError_t e = t_pending_error;
	t_pending_error = cudaSuccess;
	return e;
}

static int stream_ok(cudaStream_t s)
{
	pthread_mutex_lock(&g_lock);
	int ok = !s || g_streams.count(s);
	pthread_mutex_unlock(&g_lock);
	return ok;
}

static int event_ok(cudaEvent_t e)
{
	pthread_mutex_lock(&g_lock);
	int ok = g_events.count(e) != 0;
	pthread_mutex_unlock(&g_lock);
	return ok;
}

static const dev_alloc *alloc_containing(const void *p, size_t n);

/* "byte 40 of a 4096-byte device allocation (made at x.c:12)" */
static void describe_byte(uintptr_t a, char *buf, size_t n)
{
	pthread_mutex_lock(&g_lock);
	auto it = g_allocs.upper_bound(a);
	int found = 0;
	dev_alloc da = {};
	uintptr_t beg = 0;
	if (it != g_allocs.begin()) {
		--it;
		if (a >= it->first && a < it->first + it->second.size) {
			found = 1;
			da = it->second;
			beg = it->first;
		}
	}
	pthread_mutex_unlock(&g_lock);
	if (!found) {
		snprintf(buf, n, "host memory at %p", (void *)a);
		return;
	}
	char at[256];
	symbolize(da.pc, at, sizeof at);
	snprintf(buf, n, "byte %zu of a %zu-byte %s allocation (made at %s)", (size_t)(a - beg), da.size,
		 da.pinned ? "pinned host" : "device", at);
}

/* b against every earlier operation it is not ordered after; reports the
 * first conflict. */
static int race_check(const stream_op &b)
{
	for (const stream_op &a : g_hist) {
		if (a.stream == b.stream || a.seq <= vc_at(b.vc, a.stream))
			continue;
		uintptr_t at;
		const char *aw, *bw;
		if (ranges_meet(a.wr, b.wr, &at))
			aw = "wrote", bw = "writes";
		else if (ranges_meet(a.wr, b.rd, &at))
			aw = "wrote", bw = "reads";
		else if (ranges_meet(a.rd, b.wr, &at))
			aw = "read", bw = "writes";
		else
			continue;
		char mem[512], sa[48], sb[48], msg[2048];
		describe_byte(at, mem, sizeof mem);
		snprintf(msg, sizeof msg,
			 "emu: error: cross-stream race: %s on %s %s %s, which %s on %s %s with nothing ordering "
			 "the two (cudaEventRecord on one stream and cudaStreamWaitEvent on the other, or a "
			 "synchronisation between them, is missing) [ANATOMY_EMU_SEED=%llu]",
			 b.what.c_str(), stream_name(b.stream, sb, sizeof sb), bw, mem, a.what.c_str(),
			 stream_name(a.stream, sa, sizeof sa), aw, (unsigned long long)g_seed);
		publish_report(msg);
		t_last_error = t_pending_error = cudaErrorLaunchFailure;
		return 1;
	}
	return 0;
}

/* Drops the operations that everything issued from now on comes after. */
static void hist_gc(void)
{
	std::vector<uint64_t> cover = g_host_vc;
	size_t ns = g_stream_ids.size();
	cover.resize(ns);
	std::vector<uint64_t> all(ns, UINT64_MAX);
	for (emu_stream *s : g_stream_ids) {
		if (!s || !s->alive || (s == &g_legacy_stream && !g_legacy_used))
			continue;
		for (size_t k = 0; k < ns; k++)
			all[k] = std::min(all[k], std::max(vc_at(s->vc, (int)k), vc_at(g_host_vc, (int)k)));
	}
	for (size_t k = 0; k < ns; k++)
		if (all[k] != UINT64_MAX)
			cover[k] = std::max(cover[k], all[k]);
	size_t k = 0;
	for (size_t i = 0; i < g_hist.size(); i++) {
		if (g_hist[i].seq <= vc_at(cover, g_hist[i].stream))
			continue;
		if (k != i)	/* a self-move would empty it */
			g_hist[k] = std::move(g_hist[i]);
		k++;
	}
	g_hist.resize(k);
}

/* Checks b and keeps it for the operations after it; 1 on a race. */
static int hist_add(stream_op &&b)
{
	int race = race_check(b);
	if (!b.rd.empty() || !b.wr.empty()) {
		if (g_hist.size() >= 8192)	/* a bound: the oldest may then race unseen */
			g_hist.erase(g_hist.begin());
		g_hist.push_back(std::move(b));
	}
	if (++g_issued % 64 == 0)
		hist_gc();
	return race;
}

static void host_waits(const std::vector<uint64_t> &vc)
{
	vc_join(g_host_vc, vc);
	hist_gc();
}

static void run_queued(emu_stream *t);

/* Runs the queued work clock v comes after (and what that work comes after). */
static void flush_to(const std::vector<uint64_t> &v)
{
	for (size_t k = 0; k < g_stream_ids.size(); k++) {
		emu_stream *t = g_stream_ids[k];
		while (t && t->qhead < t->q.size() && t->q[t->qhead].seq <= vc_at(v, (int)k))
			run_queued(t);
	}
}

static void run_queued(emu_stream *t)
{
	pending_op p = t->q[t->qhead++];
	if (t->qhead == t->q.size()) {
		t->q.clear();
		t->qhead = 0;
	}
	flush_to(p.vc);
	if (p.fn(p.ctx))
		t_pending_error = cudaErrorLaunchFailure;
}

/* Before an operation on s that runs now: its clock, and every queued
 * operation it comes after, done. */
static void begin_now(emu_stream *s)
{
	stream_deps(s);
	flush_to(s->vc);
	/* its own queue too: stream order */
	while (s->qhead < s->q.size())
		run_queued(s);
}

static int recording_wanted(void) { return asan_on() && g_nstreams + g_legacy_used >= 2; }

/* Records a kernel's access to a watched allocation; 0 if not watched. */
static int watch_record(uintptr_t a, size_t n, int write)
{
	for (const srange &w : g_watch) {
		if (a < w.lo || a + n > w.hi)
			continue;
		std::vector<srange> &v = write ? g_acc_wr : g_acc_rd;
		if (!v.empty() && a <= v.back().hi && a + n >= v.back().lo) {
			v.back().lo = std::min(v.back().lo, a);
			v.back().hi = std::max(v.back().hi, (uintptr_t)(a + n));
		} else {
			v.push_back(srange{a, a + n});
			if (v.size() >= (1u << 20))
				ranges_norm(v);
		}
		return 1;
	}
	return 0;
}

static std::string op_name(const char *api, const void *pc)
{
	if (!pc)
		return api;
	char at[256];
	symbolize(pc, at, sizeof at);
	return std::string(api) + " at " + at;
}

/* A copy or memset that runs now on s (sync: the host waits for it). */
static int plain_op(emu_stream *s, const char *api, const void *pc, const void *rd, const void *wr, size_t n, int sync)
{
	stream_advance(s);
	stream_op op;
	op.stream = s->id;
	op.seq = s->seq;
	op.vc = s->vc;
	if (rd)
		op.rd.push_back(srange{(uintptr_t)rd, (uintptr_t)rd + n});
	op.wr.push_back(srange{(uintptr_t)wr, (uintptr_t)wr + n});
	op.what = op_name(api, pc);
	std::vector<uint64_t> vc = s->vc;
	int race = hist_add(std::move(op));
	if (sync)
		host_waits(vc);
	return race;
}

/* ---- launches ---- */
static const dev_alloc *alloc_containing(const void *p, size_t n)
{
	uintptr_t a = (uintptr_t)p;
	auto it = g_allocs.upper_bound(a);
	if (it == g_allocs.begin())
		return NULL;
	--it;
	if (a >= it->first && a + n <= it->first + it->second.size)
		return &it->second;
	return NULL;
}

/* Bytes of static __shared__ memory the kernel fn declares: its
 * function-scope statics, _ZZ<fn's mangled name without _Z>E<var> (the
 * kernels keep their __shared__ arrays in the kernel body itself). */
/* The static __shared__ variables, found once (g_lock held). */
static void svars_ready(void)
{
	static int done;
	if (!done) {
		done = 1;
		svars_find();
	}
}

static size_t static_smem_of(const void *fn)
{
	auto hit = g_static_smem.find(fn);
	if (hit != g_static_smem.end())
		return hit->second;
	size_t bytes = 0;
	auto f = g_funcs.find((uintptr_t)fn);
	if (f != g_funcs.end()) {
		std::string prefix = "_ZZ" + f->second.substr(2) + "E";
		for (const svar &v : g_svars)
			if (v.mangled.compare(0, prefix.size(), prefix) == 0)
				bytes += v.size;
	}
	g_static_smem[fn] = bytes;
	return bytes;
}

/* The kernel's g_kernel_regs key, from its symbol. */
static const std::string &kernel_name_of(const void *fn)
{
	auto hit = g_kernel_names.find(fn);
	if (hit != g_kernel_names.end())
		return hit->second;
	std::string k;
	auto f = g_funcs.find((uintptr_t)fn);
	if (f != g_funcs.end()) {
		int st = 0;
		char *dm = abi::__cxa_demangle(f->second.c_str(), NULL, NULL, &st);
		if (st == 0 && dm)
			k = kernel_key(dm);
		free(dm);
	}
	return g_kernel_names[fn] = k;
}

static cudaError_t launch_check(emu_launch_desc *d)
{
	dim3 g = d->grid, b = d->block;
	uint64_t nt = (uint64_t)b.x * b.y * b.z;
	if (!d->fn)
		return host_error(cudaErrorInvalidDeviceFunction, "launch at %s:%d: null kernel", d->file, d->line);
	if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || nt > 1024)
		return host_error(cudaErrorInvalidConfiguration, "launch of %s at %s:%d: block (%u,%u,%u) is not a valid block shape "
				  "(at most 1024 threads, z at most 64)", d->name, d->file, d->line, b.x, b.y, b.z);
	if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535)
		return host_error(cudaErrorInvalidConfiguration, "launch of %s at %s:%d: grid (%u,%u,%u) is not a valid grid",
				  d->name, d->file, d->line, g.x, g.y, g.z);
	/* As the hardware: without the opt-in, static plus dynamic shared memory
	 * must fit in 48 KiB; with it, dynamic up to the attribute, and static
	 * plus the attribute within the 227 KiB a block can have. */
	size_t stat = static_smem_of(d->fn);
	auto it = g_max_dyn_smem.find(d->fn);
	if (it == g_max_dyn_smem.end()) {
		if (stat + d->smem > SMEM_DEFAULT)
			return host_error(cudaErrorInvalidValue, "launch of %s at %s:%d: %zu bytes of dynamic shared memory plus "
					  "%zu static exceed the %zu a kernel may use without the opt-in (set "
					  "cudaFuncAttributeMaxDynamicSharedMemorySize)", d->name, d->file, d->line, d->smem, stat,
					  SMEM_DEFAULT);
	} else {
		if (d->smem > (size_t)it->second)
			return host_error(cudaErrorInvalidValue, "launch of %s at %s:%d: %zu bytes of dynamic shared memory, but "
					  "the kernel may use %d (cudaFuncAttributeMaxDynamicSharedMemorySize)", d->name, d->file,
					  d->line, d->smem, it->second);
		if (stat + (size_t)it->second > SMEM_OPTIN)
			return host_error(cudaErrorInvalidValue, "launch of %s at %s:%d: the opt-in of %d bytes of dynamic shared "
					  "memory plus %zu static exceed the %zu of an sm_90 block", d->name, d->file, d->line,
					  it->second, stat, SMEM_OPTIN);
	}
	/* registers: ptxas's count per thread, rounded per warp to the allocation
	 * unit, for every warp of the block, within one SM's register file */
	if (!g_kernel_regs.empty()) {
		auto r = g_kernel_regs.find(kernel_name_of(d->fn));
		if (r != g_kernel_regs.end()) {
			uint64_t warps = (nt + 31) / 32;
			uint64_t per_warp = ((uint64_t)r->second * 32 + REG_UNIT - 1) / REG_UNIT * REG_UNIT;
			if (r->second > REGS_MAX || warps * per_warp > (uint64_t)REGS_PER_SM)
				return host_error(cudaErrorLaunchOutOfResources, "launch of %s at %s:%d: %llu threads of %d registers "
						  "(ptxas) need %llu registers, more than the %d of an SM (too many resources "
						  "requested for launch)", d->name, d->file, d->line, (unsigned long long)nt,
						  r->second, (unsigned long long)(warps * per_warp), REGS_PER_SM);
		}
	}
	if (d->stream && !g_streams.count(d->stream))
		return host_error(cudaErrorInvalidResourceHandle, "launch of %s at %s:%d: invalid stream", d->name, d->file, d->line);
	for (int i = 0; i < d->nptr; i++) {
		const void *p = d->ptrs[i];
		if (p && !alloc_containing(p, 0))
			return host_error(cudaErrorIllegalAddress, "launch of %s at %s:%d: argument %d (%p) does not point into "
					  "device memory (a host pointer?)", d->name, d->file, d->line, d->ptr_index[i] + 1, p);
	}
	return cudaSuccess;
}

/* ---- resident blocks ----
 * A slot holds one started block: its scheduler state, threads, thread
 * stacks (stack_of(slot * n + i)), dynamic shared arena and shadow cells. The
 * static __shared__ variables live at fixed addresses, so their contents are
 * copied out when a paused block leaves and back when it resumes. */
struct blk_slot {
	sched *s;
	std::vector<emu_thread> threads;
	char *dyn;
	size_t dyn_cap;
	std::vector<shadow> dshadow, sshadow;
	std::vector<unsigned char> svars;	/* static shared while paused */
	int saved;
};
static std::vector<blk_slot *> g_slots;
static int g_resident_set;	/* emu_set_resident_blocks; 0: ANATOMY_EMU_RESIDENT or drawn */

static void shared_setup(size_t dyn, unsigned nslots, unsigned nthreads)
{
	if (dyn > g_dyn_cap)
		g_dyn_cap = dyn;
	if (g_dyn_cap < 256)
		g_dyn_cap = 256;
	g_dyn_size = dyn;
	while (g_slots.size() < nslots) {
		blk_slot *b = new blk_slot();
		b->s = new sched();
		b->dyn = NULL;
		b->dyn_cap = 0;
		g_slots.push_back(b);
	}
	for (unsigned k = 0; k < nslots; k++) {
		blk_slot *b = g_slots[k];
		if (b->dyn_cap != g_dyn_cap) {
			free(b->dyn);
			b->dyn_cap = g_dyn_cap;
			b->dyn = (char *)aligned_alloc(128, (g_dyn_cap + DYN_REDZONE + 127) & ~(size_t)127);
			b->dshadow.assign(g_dyn_cap, shadow());
		}
		if (b->sshadow.size() != g_sshadow_n)
			b->sshadow.assign(g_sshadow_n, shadow());
		if (b->threads.size() < nthreads)
			b->threads.resize(nthreads);
		b->s->slot = k;
		b->s->t = b->threads.data();
		b->s->n = nthreads;
		b->saved = 0;
		poison(b->dyn, g_dyn_cap + DYN_REDZONE);
	}
	for (svar &v : g_svars)
		poison((const void *)v.beg, v.span);
}

static void shared_teardown(unsigned nslots)
{
	for (svar &v : g_svars)
		unpoison((const void *)v.beg, v.restore);
	for (unsigned k = 0; k < nslots; k++)
		unpoison(g_slots[k]->dyn, g_dyn_cap + DYN_REDZONE);
}

/* Makes b's block the running one. */
static void slot_enter(blk_slot *b)
{
	S = b->s;
	g_dyn = b->dyn;
	g_dshadow.swap(b->dshadow);
	g_sshadow.swap(b->sshadow);
	if (b->saved) {
		size_t off = 0;
		for (svar &v : g_svars) {
			raw_copy((void *)v.beg, b->svars.data() + off, v.span);
			off += v.span;
		}
		b->saved = 0;
	}
}

/* Switches b's block out; a paused one keeps its static shared memory. */
static void slot_leave(blk_slot *b, int paused)
{
	if (paused) {
		size_t off = 0;
		b->svars.resize(g_sshadow_n);
		for (svar &v : g_svars) {
			raw_copy(b->svars.data() + off, (const void *)v.beg, v.span);
			off += v.span;
		}
		b->saved = 1;
	}
	g_dshadow.swap(b->dshadow);
	g_sshadow.swap(b->sshadow);
}

static void block_begin(emu_launch_desc *d, uint64_t linear)
{
	dim3 g = d->grid, b = d->block;
	S->bid.x = (unsigned)(linear % g.x);
	S->bid.y = (unsigned)(linear / g.x % g.y);
	S->bid.z = (unsigned)(linear / ((uint64_t)g.x * g.y));
	if (g_stacks_dirty) {
		unpoison(g_stacks, g_stacks_bytes);
		g_stacks_dirty = 0;
	}
	S->runq.clear();
	S->runq_head = 0;
	for (unsigned i = 0; i < S->n; i++) {
		emu_thread *t = &S->t[i];
		t->pub.tidx.x = i % b.x;
		t->pub.tidx.y = i / b.x % b.y;
		t->pub.tidx.z = i / (b.x * b.y);
		t->pub.bidx = S->bid;
		t->pub.bdim = b;
		t->pub.gdim = g;
		t->stack = stack_of(S->slot * S->n + i);
		t->stack_size = g_stack_size;
		t->state = T_RUNNABLE;
		t->started = 0;
		t->tid = i;
		t->lane = i & 31;
		t->warp = i >> 5;
		t->wait_pc = NULL;
		t->wmask = 0;
		t->wfn = NULL;
		if (t->cp)
			t->cp->clear();
		t->cp_groups = 0;
		t->fake_stack = NULL;
		fiber_init(t);
		S->runq.push_back(i);
	}
	memset(S->warp_arrived, 0, sizeof(S->warp_arrived));
	S->live = S->n;
	S->nbar = 0;
	S->nspin = 0;
	S->preempt = 0;
	S->abort = 0;
	g_gen++;
	S->blk_gen = S->bar_gen = g_gen;
	/* garbage in shared memory, as on a GPU: NaN for floats */
	if (g_dyn_size) {
		unpoison(g_dyn, g_dyn_cap + DYN_REDZONE);
		memset(g_dyn, 0xff, g_dyn_size);
	}
	poison(g_dyn, g_dyn_cap + DYN_REDZONE);
}

static void finish_report(emu_launch_desc *d, const char *body)
{
	char loc[2][600], msg[sizeof(g_report)];
	std::string s = body;
	for (int i = 0; i < 2; i++) {
		symbolize(g_pending_pc[i], loc[i], sizeof(loc[i]));
		const char *tok = i ? "@PC1@" : "@PC0@";
		size_t p;
		while ((p = s.find(tok)) != std::string::npos)
			s.replace(p, 5, loc[i]);
	}
	snprintf(msg, sizeof(msg), "emu: error: kernel %s (launched at %s:%d), block (%u,%u,%u): %s [ANATOMY_EMU_SEED=%llu]",
		 d->name, d->file, d->line, S->bid.x, S->bid.y, S->bid.z, s.c_str(), (unsigned long long)g_seed);
	publish_report(msg);
}

extern "C" cudaError_t emu_launch(emu_launch_desc *d)
{
	if (t_self)
		fail(cudaErrorLaunchFailure, __builtin_return_address(0), NULL,
		     "launch of %s from a kernel at @PC0@: dynamic parallelism is not emulated", d->name);
	pthread_mutex_lock(&g_slock);
	pthread_mutex_lock(&g_lock);
	env_init();
	svars_ready();
	cudaError_t err = launch_check(d);
	if (err) {
		pthread_mutex_unlock(&g_lock);
		pthread_mutex_unlock(&g_slock);
		return err;
	}
	/* stream order: what the launch comes after runs first (the queued
	 * work runs without g_lock: a collective may wait for other ranks) */
	emu_stream *es = stream_of(d->stream);
	pthread_mutex_unlock(&g_lock);
	begin_now(es);
	pthread_mutex_lock(&g_lock);
	stream_advance(es);
	stream_op sop;
	sop.stream = es->id;
	sop.seq = es->seq;
	sop.vc = es->vc;
	int record = recording_wanted();
	if (record) {
		for (int i = 0; i < d->nptr; i++) {
			uintptr_t p = (uintptr_t)d->ptrs[i];
			auto it = g_allocs.upper_bound(p);
			if (!p || it == g_allocs.begin())
				continue;
			--it;
			uintptr_t lo = it->first, hi = it->first + it->second.size;
			if (p > hi)
				continue;
			int dup = 0;
			for (const srange &w : g_watch)
				dup |= w.lo == lo;
			if (!dup && hi > lo) {
				g_watch.push_back(srange{lo, hi});
				poison((const void *)lo, hi - lo);
			}
		}
	}
	unsigned n = d->block.x * d->block.y * d->block.z;
	uint64_t grng = g_seed * 0x9e3779b97f4a7c15ull + 1;	/* block order and choices */
	uint64_t nblocks = (uint64_t)d->grid.x * d->grid.y * d->grid.z;
	/* Blocks started at once: CUDA promises none beyond the running one (a
	 * block may wait only on blocks that have started), so seed 0 runs one
	 * at a time, as before; other seeds draw 1-4, ANATOMY_EMU_RESIDENT or
	 * emu_set_resident_blocks set it. */
	unsigned resident = g_seed ? 1 + (unsigned)(rng_next(&grng) % 4) : 1;
	const char *rs = getenv("ANATOMY_EMU_RESIDENT");
	if (g_resident_set > 0)
		resident = (unsigned)g_resident_set;
	else if (rs && atoi(rs) > 0)
		resident = (unsigned)atoi(rs);
	if (resident > nblocks)
		resident = nblocks ? (unsigned)nblocks : 1;
	if (resident > 64)
		resident = 64;
	g_resident_now = resident;
	stacks_reserve(n * resident);
	if (!g_stacks) {
		pthread_mutex_unlock(&g_lock);
		return host_error(cudaErrorMemoryAllocation, "launch of %s: cannot map thread stacks", d->name);
	}
	shared_setup(d->smem, resident, n);
	for (unsigned k = 0; k < resident; k++) {
		g_slots[k]->s->d = d;
		g_slots[k]->s->rng = g_seed * 0x9e3779b97f4a7c15ull + 1 + k;
	}

	std::vector<uint32_t> order;
	if (g_seed && nblocks > 1 && nblocks <= (1u << 22)) {
		order.resize(nblocks);
		for (uint32_t i = 0; i < nblocks; i++)
			order[i] = i;
		for (uint32_t i = (uint32_t)nblocks - 1; i > 0; i--)
			std::swap(order[i], order[rng_next(&grng) % (i + 1)]);
	}
	int rc = 0;
	char msg[2048] = "";
	std::vector<blk_slot *> started, ready;	/* blocks started and not ended */
	uint64_t next = 0;
	while (!rc) {
		/* what can go on: a started block with a thread to run or a flag
		 * it waits for now set, or a new block while a slot is free */
		ready.clear();
		for (blk_slot *b : started)
			if (b->s->runq.size() > b->s->runq_head || spinners_ready(b->s, 0))
				ready.push_back(b);
		int can_start = next < nblocks && started.size() < resident;
		if (ready.empty() && !can_start) {
			if (started.empty())
				break;
			/* deadlock: every started block waits, none may start */
			std::string all;
			for (blk_slot *b : started) {
				char who[1500];
				S = b->s;
				describe_threads(who, sizeof(who));
				char head[64];
				snprintf(head, sizeof head, "%sblock (%u,%u,%u): ", all.empty() ? "" : "; ", S->bid.x, S->bid.y,
					 S->bid.z);
				all += head;
				all += who;
			}
			S = started[0]->s;
			snprintf(msg, sizeof msg, "grid deadlock: no started block can proceed (on a GPU this hangs) and %llu "
				 "of %llu blocks have not started (%u may be resident at once here; a block may only wait on "
				 "blocks that have started): %s", (unsigned long long)(nblocks - next),
				 (unsigned long long)nblocks, resident, all.c_str());
			g_pending_pc[0] = g_pending_pc[1] = NULL;
			finish_report(d, msg);
			g_stacks_dirty = 1;
			rc = cudaErrorLaunchTimeout;
			break;
		}
		size_t pick = g_seed ? (size_t)(rng_next(&grng) % (ready.size() + can_start)) : 0;
		blk_slot *b;
		int fresh = pick >= ready.size();
		if (!fresh) {
			b = ready[pick];
		} else {	/* the first free slot */
			b = NULL;
			for (unsigned k = 0; k < resident && !b; k++)
				if (std::find(started.begin(), started.end(), g_slots[k]) == started.end())
					b = g_slots[k];
			started.push_back(b);
		}
		slot_enter(b);
		if (fresh) {
			block_begin(d, order.empty() ? next : order[next]);
			next++;
		}
		rc = run_block(msg, sizeof(msg));
		if (rc == BLOCK_PAUSED) {
			rc = 0;
			slot_leave(b, 1);
			continue;
		}
		if (rc) {
			if (S->abort) {
				finish_report(d, g_pending);
			} else {
				g_pending_pc[0] = g_pending_pc[1] = NULL;
				finish_report(d, msg);
			}
			g_stacks_dirty = 1;
		}
		slot_leave(b, 0);
		started.erase(std::find(started.begin(), started.end(), b));
	}
	shared_teardown(resident);
	S = NULL;
	for (const srange &w : g_watch)
		unpoison((const void *)w.lo, w.hi - w.lo);
	g_watch.clear();
	ranges_norm(g_acc_rd);
	ranges_norm(g_acc_wr);
	sop.rd.swap(g_acc_rd);
	sop.wr.swap(g_acc_wr);
	g_acc_rd.clear();
	g_acc_wr.clear();
	pthread_mutex_unlock(&g_lock);
	char where[64];
	snprintf(where, sizeof where, "%d", d->line);
	sop.what = std::string("kernel ") + d->name + " (launched at " + d->file + ":" + where + ")";
	if (hist_add(std::move(sop)) && !rc)
		rc = cudaErrorLaunchFailure;
	pthread_mutex_unlock(&g_slock);
	if (rc) {
		t_last_error = (cudaError_t)rc;
		t_pending_error = (cudaError_t)rc;
	}
	return (cudaError_t)rc;
}

/* ---- host API ---- */
static const size_t REDZONE = 256;

extern "C" cudaError_t emu_malloc_at(void **p, size_t n, const void *pc)
{
	if (!p)
		return host_error(cudaErrorInvalidValue, "cudaMalloc: null result pointer");
	*p = NULL;
	if (n == 0)
		return cudaSuccess;
	env_init();
	pthread_mutex_lock(&g_lock);
	int full = g_device_bytes && g_live_bytes + n > g_device_bytes;
	pthread_mutex_unlock(&g_lock);
	if (full)
		return host_error(cudaErrorMemoryAllocation, "cudaMalloc: %zu bytes do not fit the emulated device's %zu MiB (ANATOMY_EMU_DEVICE_MB), %zu in use",
				  n, g_device_bytes >> 20, g_live_bytes);
	size_t raw_size = n + 2 * REDZONE + 256;
	char *raw = (char *)malloc(raw_size);
	if (!raw)
		return host_error(cudaErrorMemoryAllocation, "cudaMalloc: out of memory for %zu bytes", n);
	char *user = (char *)(((uintptr_t)raw + REDZONE + 255) & ~(uintptr_t)255);
	/* uninitialised device memory: NaN, not zero; but from 1 GiB on the pages
	 * are left untouched (zero) until written, so that a test can allocate
	 * a buffer past 2^31 elements and use only its far end (index
	 * arithmetic) without the host paying for all of it */
	if (n < ((size_t)1 << 30))
		memset(user, 0xff, n);
	poison(raw, (size_t)(user - raw));
	poison(user + n, (size_t)(raw + raw_size - (user + n)));
	pthread_mutex_lock(&g_lock);
	g_allocs[(uintptr_t)user] = dev_alloc{n, raw, raw_size, pc, 0};
	g_live_bytes += n;
	pthread_mutex_unlock(&g_lock);
	*p = user;
	return cudaSuccess;
}

static cudaError_t free_alloc(void *p, int pinned, const char *who)
{
	if (!p)
		return cudaSuccess;
	pthread_mutex_lock(&g_lock);
	auto it = g_allocs.find((uintptr_t)p);
	if (it == g_allocs.end() || it->second.pinned != pinned) {
		pthread_mutex_unlock(&g_lock);
		return host_error(cudaErrorInvalidValue, "%s(%p): not a pointer this allocator returned (double free?)", who, p);
	}
	dev_alloc a = it->second;
	g_allocs.erase(it);
	if (!pinned)
		g_live_bytes -= a.size;
	g_freed[g_nfreed++ % 64] = freed_alloc{(uintptr_t)p, a.size};
	pthread_mutex_unlock(&g_lock);
	unpoison(a.raw, a.raw_size);
	free(a.raw);
	return cudaSuccess;
}

extern "C" cudaError_t cudaMalloc(void **p, size_t n) { return emu_malloc_at(p, n, __builtin_return_address(0)); }
extern "C" cudaError_t cudaFree(void *p) { return free_alloc(p, 0, "cudaFree"); }
extern "C" cudaError_t cudaFreeHost(void *p) { return free_alloc(p, 1, "cudaFreeHost"); }

extern "C" cudaError_t cudaMallocHost(void **p, size_t n)
{
	if (!p)
		return host_error(cudaErrorInvalidValue, "cudaMallocHost: null result pointer");
	*p = NULL;
	char *raw = (char *)malloc(n + 256);
	if (!raw)
		return host_error(cudaErrorMemoryAllocation, "cudaMallocHost: out of memory for %zu bytes", n);
	char *user = (char *)(((uintptr_t)raw + 255) & ~(uintptr_t)255);
	pthread_mutex_lock(&g_lock);
	g_allocs[(uintptr_t)user] = dev_alloc{n, raw, n + 256, __builtin_return_address(0), 1};
	pthread_mutex_unlock(&g_lock);
	*p = user;
	return cudaSuccess;
}

extern "C" cudaError_t cudaHostAlloc(void **p, size_t n, unsigned) { return cudaMallocHost(p, n); }

/* A range that starts in device memory must stay inside its allocation. */
static cudaError_t check_range(const char *api, const char *which, const void *p, size_t n, int must_be_device)
{
	pthread_mutex_lock(&g_lock);
	const dev_alloc *a = alloc_containing(p, 0);
	int ok = a ? alloc_containing(p, n) != NULL : !must_be_device;
	size_t avail = 0;
	if (a) {
		auto it = g_allocs.upper_bound((uintptr_t)p);
		--it;
		avail = it->first + it->second.size - (uintptr_t)p;
	}
	pthread_mutex_unlock(&g_lock);
	if (ok)
		return cudaSuccess;
	if (!a)
		return host_error(cudaErrorInvalidValue, "%s: %s %p is not device memory", api, which, p);
	return host_error(cudaErrorInvalidValue, "%s: %zu bytes at %s %p, but its allocation has %zu bytes from there",
			  api, n, which, p, avail);
}

static cudaError_t copy_on(emu_stream *s, const char *api, const void *pc, void *dst, const void *src, size_t n,
			  enum cudaMemcpyKind kind, int sync)
{
	cudaError_t e;
	if (n == 0)
		return cudaSuccess;
	if ((unsigned)kind > cudaMemcpyDefault)
		return host_error(cudaErrorInvalidMemcpyDirection, "%s: invalid direction %d", api, (int)kind);
	if (!dst || !src)
		return host_error(cudaErrorInvalidValue, "%s: null pointer", api);
	int dev_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
	int dev_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
	if ((e = check_range(api, "destination", dst, n, dev_dst)) != cudaSuccess)
		return e;
	if ((e = check_range(api, "source", src, n, dev_src)) != cudaSuccess)
		return e;
	if (sync) {
		/* CUDA's "API synchronization behavior": the host waits for a copy
		 * into host memory or out of pinned memory; not for one from
		 * pageable memory to the device (done once staged) nor between
		 * device buffers. */
		pthread_mutex_lock(&g_lock);
		const dev_alloc *da = alloc_containing(dst, n), *sa = alloc_containing(src, n);
		sync = !da || da->pinned || (sa && sa->pinned);
		pthread_mutex_unlock(&g_lock);
	}
	pthread_mutex_lock(&g_slock);
	env_init();
	begin_now(s);
	memmove(dst, src, n);
	plain_op(s, api, pc, src, dst, n, sync);
	pthread_mutex_unlock(&g_slock);
	return take_pending();
}

/* On the legacy default stream; the host waits for it as copy_on says. */
extern "C" cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind)
{
	return copy_on(&g_legacy_stream, "cudaMemcpy", __builtin_return_address(0), dst, src, n, kind, 1);
}

extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s)
{
	if (!stream_ok(s))
		return host_error(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync: invalid stream");
	return copy_on(stream_of(s), "cudaMemcpyAsync", __builtin_return_address(0), dst, src, n, kind, 0);
}

static cudaError_t set_on(emu_stream *s, const char *api, const void *pc, void *p, int v, size_t n)
{
	if (n == 0)
		return cudaSuccess;
	cudaError_t e = check_range(api, "pointer", p, n, 1);
	if (e)
		return e;
	pthread_mutex_lock(&g_slock);
	env_init();
	begin_now(s);
	memset(p, v, n);
	int race = plain_op(s, api, pc, NULL, p, n, 0);
	pthread_mutex_unlock(&g_slock);
	return race ? cudaErrorLaunchFailure : cudaSuccess;
}

/* On the legacy default stream; asynchronous to the host for device memory. */
extern "C" cudaError_t cudaMemset(void *p, int v, size_t n)
{
	return set_on(&g_legacy_stream, "cudaMemset", __builtin_return_address(0), p, v, n);
}

extern "C" cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s)
{
	if (!stream_ok(s))
		return host_error(cudaErrorInvalidResourceHandle, "cudaMemsetAsync: invalid stream");
	return set_on(stream_of(s), "cudaMemsetAsync", __builtin_return_address(0), p, v, n);
}

extern "C" cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
	env_init();
	size_t total = g_device_bytes ? g_device_bytes : (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
	pthread_mutex_lock(&g_lock);
	size_t live = g_live_bytes;
	pthread_mutex_unlock(&g_lock);
	if (free_bytes)
		*free_bytes = total > live ? total - live : 0;
	if (total_bytes)
		*total_bytes = total;
	return cudaSuccess;
}

extern "C" cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
	if (!s)
		return host_error(cudaErrorInvalidValue, "cudaStreamCreate: null result pointer");
	pthread_mutex_lock(&g_slock);
	emu_stream *ns = new emu_stream();
	ns->flags = flags;
	ns->id = (int)g_stream_ids.size();
	ns->alive = 1;
	ns->vc = g_host_vc;
	g_stream_ids.push_back(ns);
	g_nstreams++;
	pthread_mutex_lock(&g_lock);
	g_streams.insert(ns);
	pthread_mutex_unlock(&g_lock);
	pthread_mutex_unlock(&g_slock);
	*s = ns;
	return cudaSuccess;
}
extern "C" cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }

/* As CUDA: returns at once; the work already queued still runs. */
extern "C" cudaError_t cudaStreamDestroy(cudaStream_t s)
{
	pthread_mutex_lock(&g_slock);
	pthread_mutex_lock(&g_lock);
	int ok = g_streams.erase(s) == 1;
	pthread_mutex_unlock(&g_lock);
	if (!ok) {
		pthread_mutex_unlock(&g_slock);
		return host_error(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: invalid stream %p", (void *)s);
	}
	while (s->qhead < s->q.size())
		run_queued(s);
	s->alive = 0;
	g_nstreams--;
	/* the id stays: operations in the history and clocks refer to it */
	pthread_mutex_unlock(&g_slock);
	return cudaSuccess;
}

extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
	if (!stream_ok(s))
		return host_error(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize: invalid stream");
	pthread_mutex_lock(&g_slock);
	emu_stream *es = stream_of(s);
	stream_deps(es);
	flush_to(es->vc);
	while (es->qhead < es->q.size())
		run_queued(es);
	host_waits(es->vc);
	pthread_mutex_unlock(&g_slock);
	return take_pending();
}
/* "done" orders like a synchronisation, and everything is done once run */
extern "C" cudaError_t cudaStreamQuery(cudaStream_t s) { return cudaStreamSynchronize(s); }

extern "C" cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned)
{
	if (!stream_ok(s) || !event_ok(e))
		return host_error(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: invalid stream or event");
	pthread_mutex_lock(&g_slock);
	if (e->recorded)	/* waiting for an event never recorded waits for nothing */
		vc_join(stream_of(s)->vc, e->vc);
	pthread_mutex_unlock(&g_slock);
	return cudaSuccess;
}

extern "C" cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned)
{
	if (!e)
		return host_error(cudaErrorInvalidValue, "cudaEventCreate: null result pointer");
	*e = new emu_event();
	pthread_mutex_lock(&g_lock);
	g_events.insert(*e);
	pthread_mutex_unlock(&g_lock);
	return cudaSuccess;
}
extern "C" cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }

extern "C" cudaError_t cudaEventDestroy(cudaEvent_t e)
{
	pthread_mutex_lock(&g_lock);
	int ok = g_events.erase(e) == 1;
	pthread_mutex_unlock(&g_lock);
	if (!ok)
		return host_error(cudaErrorInvalidResourceHandle, "cudaEventDestroy: invalid event");
	delete e;
	return cudaSuccess;
}

/* The event captures the work issued to s so far (its clock), whether or not
 * that work has run yet. */
extern "C" cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
	if (!event_ok(e) || !stream_ok(s))
		return host_error(cudaErrorInvalidResourceHandle, "cudaEventRecord: invalid event or stream");
	pthread_mutex_lock(&g_slock);
	emu_stream *es = stream_of(s);
	stream_deps(es);
	e->vc = es->vc;
	if (es == &g_legacy_stream)
		g_legacy_used = 1;
	pthread_mutex_unlock(&g_slock);
	e->t = now_ms();
	e->recorded = 1;
	return cudaSuccess;
}

extern "C" cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
	if (!event_ok(e))
		return host_error(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: invalid event");
	pthread_mutex_lock(&g_slock);
	flush_to(e->vc);
	host_waits(e->vc);
	pthread_mutex_unlock(&g_slock);
	return take_pending();
}
extern "C" cudaError_t cudaEventQuery(cudaEvent_t e) { return cudaEventSynchronize(e); }

extern "C" cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
	if (!ms || !event_ok(a) || !event_ok(b))
		return host_error(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: invalid event");
	if (!a->recorded || !b->recorded)
		return host_error(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: event not recorded");
	*ms = (float)(b->t - a->t);
	return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceSynchronize(void)
{
	pthread_mutex_lock(&g_slock);
	for (emu_stream *s : g_stream_ids)
		if (s)
			while (s->qhead < s->q.size())
				run_queued(s);
	for (emu_stream *s : g_stream_ids)
		if (s)
			vc_join(g_host_vc, s->vc);
	host_waits(g_host_vc);
	pthread_mutex_unlock(&g_slock);
	return take_pending();
}

extern "C" cudaError_t emu_stream_enqueue(cudaStream_t s, const char *what, const void *caller, int (*fn)(void *),
					  void *ctx, const struct emu_range *r, int nr)
{
	if (!stream_ok(s))
		return host_error(cudaErrorInvalidResourceHandle, "%s: invalid stream", what);
	pthread_mutex_lock(&g_slock);
	env_init();
	emu_stream *es = stream_of(s);
	stream_advance(es);
	stream_op op;
	op.stream = es->id;
	op.seq = es->seq;
	op.vc = es->vc;
	for (int i = 0; i < nr; i++) {
		if (!r[i].n)
			continue;
		srange x = {(uintptr_t)r[i].p, (uintptr_t)r[i].p + r[i].n};
		(r[i].write ? op.wr : op.rd).push_back(x);
	}
	ranges_norm(op.rd);
	ranges_norm(op.wr);
	op.what = op_name(what, caller);
	int race = hist_add(std::move(op));
	es->q.push_back(pending_op{es->seq, es->vc, fn, ctx});
	/* the seeded coin: now (after its stream's queue), or when needed.
	 * Only these two points: a host blocked in a collective elsewhere (at
	 * a kernel launch, say) is where no GPU program blocks, and a peer's
	 * failure would then be reported from there. */
	if (!g_seed || (rng_next(&g_srng) >> 32) & 1)
		while (es->qhead < es->q.size())
			run_queued(es);
	pthread_mutex_unlock(&g_slock);
	return race ? cudaErrorLaunchFailure : cudaSuccess;
}

extern "C" cudaError_t cudaDeviceReset(void) { t_pending_error = t_last_error = cudaSuccess; return cudaSuccess; }

extern "C" cudaError_t cudaGetLastError(void)
{
	cudaError_t e = t_last_error;
	t_last_error = cudaSuccess;
	return e;
}
extern "C" cudaError_t cudaPeekAtLastError(void) { return t_last_error; }

extern "C" const char *cudaGetErrorName(cudaError_t e)
{
	switch (e) {
	case cudaSuccess: return "cudaSuccess";
	case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
	case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
	case cudaErrorInitializationError: return "cudaErrorInitializationError";
	case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
	case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
	case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
	case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
	case cudaErrorNoDevice: return "cudaErrorNoDevice";
	case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
	case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
	case cudaErrorNotReady: return "cudaErrorNotReady";
	case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
	case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
	case cudaErrorLaunchTimeout: return "cudaErrorLaunchTimeout";
	case cudaErrorAssert: return "cudaErrorAssert";
	case cudaErrorIllegalInstruction: return "cudaErrorIllegalInstruction";
	case cudaErrorMisalignedAddress: return "cudaErrorMisalignedAddress";
	case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
	}
	return "cudaErrorUnknown";
}

extern "C" const char *cudaGetErrorString(cudaError_t e)
{
	switch (e) {
	case cudaSuccess: return "no error";
	case cudaErrorInvalidValue: return "invalid argument";
	case cudaErrorMemoryAllocation: return "out of memory";
	case cudaErrorInvalidConfiguration: return "invalid configuration argument";
	case cudaErrorInvalidResourceHandle: return "invalid resource handle";
	case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
	case cudaErrorLaunchTimeout: return "the launch timed out and was terminated (emulator: deadlock)";
	case cudaErrorIllegalInstruction: return "an illegal instruction was encountered";
	case cudaErrorMisalignedAddress: return "misaligned address";
	case cudaErrorLaunchFailure: return "unspecified launch failure";
	default: return cudaGetErrorName(e);
	}
}

extern "C" cudaError_t cudaGetDeviceCount(int *n)
{
	if (n)
		*n = 1;
	return cudaSuccess;
}
extern "C" cudaError_t cudaSetDevice(int d)
{
	return d == 0 ? cudaSuccess : host_error(cudaErrorInvalidDevice, "cudaSetDevice(%d): the emulator has device 0 only", d);
}
extern "C" cudaError_t cudaGetDevice(int *d)
{
	if (d)
		*d = 0;
	return cudaSuccess;
}

extern "C" cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d)
{
	if (!p || d != 0)
		return host_error(cudaErrorInvalidDevice, "cudaGetDeviceProperties: invalid device %d", d);
	memset(p, 0, sizeof(*p));
	snprintf(p->name, sizeof(p->name), "anatomy device emulator (sm_90 semantics)");
	cudaMemGetInfo(NULL, &p->totalGlobalMem);
	p->sharedMemPerBlock = 48 * 1024;
	p->sharedMemPerBlockOptin = 227 * 1024;
	p->sharedMemPerMultiprocessor = 228 * 1024;
	p->regsPerBlock = 65536;
	p->warpSize = 32;
	p->maxThreadsPerBlock = 1024;
	p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
	p->maxThreadsDim[2] = 64;
	p->maxGridSize[0] = 0x7fffffff;
	p->maxGridSize[1] = p->maxGridSize[2] = 65535;
	p->major = 9;
	p->minor = 0;
	p->multiProcessorCount = 1;
	p->maxThreadsPerMultiProcessor = 2048;
	p->l2CacheSize = 50 * 1024 * 1024;
	p->totalConstMem = 64 * 1024;
	return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int d)
{
	struct cudaDeviceProp p;
	if (!v || cudaGetDeviceProperties(&p, d))
		return cudaErrorInvalidValue;
	switch (a) {
	case cudaDevAttrMaxThreadsPerBlock: *v = p.maxThreadsPerBlock; break;
	case cudaDevAttrMaxSharedMemoryPerBlock: *v = (int)p.sharedMemPerBlock; break;
	case cudaDevAttrWarpSize: *v = 32; break;
	case cudaDevAttrMultiProcessorCount: *v = p.multiProcessorCount; break;
	case cudaDevAttrComputeCapabilityMajor: *v = p.major; break;
	case cudaDevAttrComputeCapabilityMinor: *v = p.minor; break;
	case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = (int)p.sharedMemPerBlockOptin; break;
	default: return host_error(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute %d not emulated", (int)a);
	}
	return cudaSuccess;
}

extern "C" cudaError_t cudaFuncSetAttribute(const void *fn, enum cudaFuncAttribute a, int v)
{
	if (!fn)
		return host_error(cudaErrorInvalidDeviceFunction, "cudaFuncSetAttribute: null kernel");
	if (a == cudaFuncAttributeMaxDynamicSharedMemorySize) {
		if (v < 0 || v > 227 * 1024)
			return host_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: %d bytes of dynamic shared memory "
					  "exceeds the 227 KiB of an sm_90 block", v);
		pthread_mutex_lock(&g_lock);
		g_max_dyn_smem[fn] = v;
		pthread_mutex_unlock(&g_lock);
	}
	return cudaSuccess;
}

/* ---- emulator controls ---- */
/* As the CUDA occupancy calculator for sm_90: the blocks of `block` threads
 * and `dyn` bytes of dynamic shared memory one SM holds at once, limited by
 * registers (ptxas's count per thread for sm_90, else the largest of the
 * report's, allocated per warp in units of 256),
 * shared memory (static plus dynamic plus the reserved 1 KiB per block),
 * warps and blocks. Needs the kernel's register count (ANATOMY_EMU_PTXAS). */
extern "C" cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *nb, const void *fn, int block, size_t dyn)
{
	if (!nb || !fn || block <= 0 || block > 1024)
		return host_error(cudaErrorInvalidValue, "cudaOccupancyMaxActiveBlocksPerMultiprocessor: invalid argument");
	pthread_mutex_lock(&g_lock);
	env_init();
	svars_ready();
	const std::string &name = kernel_name_of(fn);
	auto r = g_kernel_regs.find(name);
	if (r == g_kernel_regs.end()) {
		pthread_mutex_unlock(&g_lock);
		return host_error(cudaErrorInvalidDeviceFunction, "cudaOccupancyMaxActiveBlocksPerMultiprocessor: no "
				  "register count for %s (ANATOMY_EMU_PTXAS names the build's ptxas report)", name.c_str());
	}
	auto r90 = g_kernel_regs_sm90.find(name);
	if (r90 != g_kernel_regs_sm90.end())
		r = r90;
	size_t stat = static_smem_of(fn);
	auto a = g_max_dyn_smem.find(fn);
	size_t dyn_max = a == g_max_dyn_smem.end() ? SMEM_DEFAULT - std::min(stat, SMEM_DEFAULT) : (size_t)a->second;
	int regs = r->second;
	pthread_mutex_unlock(&g_lock);
	int warps = (block + 31) / 32;
	int per_warp = (regs * 32 + REG_UNIT - 1) / REG_UNIT * REG_UNIT;
	int by_regs = regs > REGS_MAX ? 0 : REGS_PER_SM / per_warp / warps;
	int by_smem = dyn > dyn_max || stat + dyn > SMEM_OPTIN ? 0 : (int)(SMEM_PER_SM / (stat + dyn + SMEM_RESERVED));
	int by_warps = WARPS_PER_SM / warps;
	*nb = std::min(std::min(by_regs, by_smem), std::min(by_warps, BLOCKS_PER_SM));
	return cudaSuccess;
}

extern "C" const char *emu_last_report(void) { return g_report; }
extern "C" void emu_clear_report(void) { g_report[0] = 0; }
extern "C" void emu_set_quiet(int quiet) { env_init(); g_quiet = quiet; }
extern "C" void emu_set_seed(uint64_t seed)
{
	env_init();
	g_seed = seed;
	g_srng = g_seed * 0x2545f4914f6cdd1dull + 0x9e3779b97f4a7c15ull;
}
extern "C" void emu_set_kernel_regs(const char *kernel, int regs)
{
	pthread_mutex_lock(&g_lock);
	env_init();
	g_kernel_regs[kernel_key(kernel)] = regs;
	g_kernel_regs_sm90[kernel_key(kernel)] = regs;
	pthread_mutex_unlock(&g_lock);
}
extern "C" uint64_t emu_get_seed(void) { env_init(); return g_seed; }
extern "C" void emu_set_resident_blocks(int n) { g_resident_set = n > 0 ? n : 0; }
extern "C" uint64_t emu_switch_count(void) { return g_switches; }
extern "C" int emu_checks_active(void) { return asan_on(); }
