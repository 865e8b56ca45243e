/* kernels/cuda/emu/emu_fp16.h: __nv_bfloat16 and __half for the device emulator.
 *
 * Storage and rounding follow cuda_bf16.h / cuda_fp16.h: conversions from
 * float round to nearest even, NaN becomes the canonical 0x7fff, overflow
 * goes to infinity. Arithmetic on two 16-bit values is rounded once from the
 * exact result (computed in double, which holds the exact sum or product of
 * two 16-bit values), as the sm_80+ instructions add.bf16 / fma.rn.bf16 do.
 * Included by emu.h after the vector types; kernels never include it directly. */
#ifndef ANATOMY_EMU_FP16_H
#define ANATOMY_EMU_FP16_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t emu_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float emu_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* Round x to a binary format with p significant bits, minimum normal exponent
 * emin and largest finite value maxv, to nearest even. x / ulp is exact
 * because ulp is a power of two, so nearbyint does the only rounding. */
static inline double emu_round_fp(double x, int p, int emin, double maxv)
{
	if (x != x || x == 0.0 || isinf(x))
		return x;
	int e;
	frexp(x, &e);
	int lead = e - 1 < emin ? emin : e - 1;
	double ulp = ldexp(1.0, lead - (p - 1));
	double r = nearbyint(x / ulp) * ulp;
	if (fabs(r) > maxv)
		return copysign(INFINITY, x);
	return r;
}

/* float -> bf16 bits, round to nearest even, as cuda_bf16.hpp's host path. */
static inline unsigned short emu_f2bf_rn(float f)
{
	uint32_t u = emu_f2u(f);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return 0x7fff;
	u += 0x7fffu + ((u >> 16) & 1u);
	return (unsigned short)(u >> 16);
}

static inline unsigned short emu_f2bf_rz(float f)
{
	uint32_t u = emu_f2u(f);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return 0x7fff;
	return (unsigned short)(u >> 16);
}

static inline float emu_bf2f(unsigned short h) { return emu_u2f((uint32_t)h << 16); }

static inline unsigned short emu_d2bf_rn(double d)
{
	if (d != d)
		return 0x7fff;
	float f = (float)emu_round_fp(d, 8, -126, 0x1.fep127);
	return (unsigned short)(emu_f2u(f) >> 16);
}

/* float -> half bits, round to nearest even with subnormals, as cuda_fp16.hpp. */
static inline unsigned short emu_f2h_rn(float f)
{
	uint32_t x = emu_f2u(f), u = x & 0x7fffffffu, sign = (x >> 16) & 0x8000u;
	uint32_t r, rem;
	if (u >= 0x7f800000u)
		return (unsigned short)(u == 0x7f800000u ? (sign | 0x7c00u) : 0x7fffu);
	if (u > 0x477fefffu) {
		r = sign | 0x7bffu;
		rem = 0x80000000u;
	} else if (u >= 0x38800000u) {
		rem = u << 19;
		r = sign | ((u - 0x38000000u) >> 13);
	} else if (u < 0x33000001u) {
		rem = u;
		r = sign;
	} else {
		uint32_t shift = 0x7eu - (u >> 23), mant = (u & 0x7fffffu) | 0x800000u;
		rem = mant << (32 - shift);
		r = sign | (mant >> shift);
	}
	if (rem > 0x80000000u || (rem == 0x80000000u && (r & 1u)))
		r++;
	return (unsigned short)r;
}

static inline float emu_h2f(unsigned short h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu;
	if (e == 0x1f)
		return emu_u2f(sign | 0x7f800000u | (m << 13));
	if (e == 0) {
		float v = ldexpf((float)m, -24);
		return sign ? -v : v;
	}
	return emu_u2f(sign | ((e + 112) << 23) | (m << 13));
}

static inline unsigned short emu_d2h_rn(double d)
{
	if (d != d)
		return 0x7fff;
	return emu_f2h_rn((float)emu_round_fp(d, 11, -14, 65504.0));
}

/* ---- __nv_bfloat16 ---- */
struct __nv_bfloat16_raw { unsigned short x; };
struct __nv_bfloat162_raw { unsigned short x, y; };

struct __nv_bfloat16 {
	unsigned short __x;
	__nv_bfloat16() = default;
	__nv_bfloat16(const __nv_bfloat16_raw &r) : __x(r.x) {}
	__nv_bfloat16(float f) : __x(emu_f2bf_rn(f)) {}
	__nv_bfloat16(double d) : __x(emu_d2bf_rn(d)) {}
	__nv_bfloat16(int i) : __x(emu_d2bf_rn((double)i)) {}
	__nv_bfloat16(unsigned i) : __x(emu_d2bf_rn((double)i)) {}
	__nv_bfloat16(long long i) : __x(emu_d2bf_rn((double)i)) {}
	__nv_bfloat16(unsigned long long i) : __x(emu_d2bf_rn((double)i)) {}
	operator __nv_bfloat16_raw() const { __nv_bfloat16_raw r; r.x = __x; return r; }
	operator float() const { return emu_bf2f(__x); }
	__nv_bfloat16 &operator=(const __nv_bfloat16_raw &r) { __x = r.x; return *this; }
	__nv_bfloat16 &operator=(float f) { __x = emu_f2bf_rn(f); return *this; }
	__nv_bfloat16 &operator=(double d) { __x = emu_d2bf_rn(d); return *this; }
};
typedef __nv_bfloat16 nv_bfloat16;

struct alignas(4) __nv_bfloat162 {
	__nv_bfloat16 x, y;
	__nv_bfloat162() = default;
	__nv_bfloat162(const __nv_bfloat16 &a, const __nv_bfloat16 &b) : x(a), y(b) {}
	__nv_bfloat162(const __nv_bfloat162_raw &r) { x.__x = r.x; y.__x = r.y; }
	operator __nv_bfloat162_raw() const { __nv_bfloat162_raw r; r.x = x.__x; r.y = y.__x; return r; }
};
typedef __nv_bfloat162 nv_bfloat162;

static inline __nv_bfloat16 emu_bf_bits(unsigned short b) { __nv_bfloat16 h; h.__x = b; return h; }
static inline __nv_bfloat16 __float2bfloat16(float f) { return emu_bf_bits(emu_f2bf_rn(f)); }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return emu_bf_bits(emu_f2bf_rn(f)); }
static inline __nv_bfloat16 __float2bfloat16_rz(float f) { return emu_bf_bits(emu_f2bf_rz(f)); }
static inline __nv_bfloat16 __double2bfloat16(double d) { return emu_bf_bits(emu_d2bf_rn(d)); }
static inline __nv_bfloat16 __int2bfloat16_rn(int i) { return emu_bf_bits(emu_d2bf_rn((double)i)); }
static inline float __bfloat162float(__nv_bfloat16 h) { return emu_bf2f(h.__x); }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return emu_bf_bits(b); }
static inline __nv_bfloat162 __float2bfloat162_rn(float f) { return __nv_bfloat162(__float2bfloat16(f), __float2bfloat16(f)); }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return __nv_bfloat162(__float2bfloat16(a), __float2bfloat16(b)); }
static inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162(a, b); }
static inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return __nv_bfloat162(a, a); }
static inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 a) { return a.x; }
static inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 a) { return a.y; }
static inline float __low2float(__nv_bfloat162 a) { return emu_bf2f(a.x.__x); }
static inline float __high2float(__nv_bfloat162 a) { return emu_bf2f(a.y.__x); }

static inline double emu_bfd(__nv_bfloat16 h) { return (double)emu_bf2f(h.__x); }
static inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return __double2bfloat16(emu_bfd(a) + emu_bfd(b)); }
static inline __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) { return __double2bfloat16(emu_bfd(a) - emu_bfd(b)); }
static inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return __double2bfloat16(emu_bfd(a) * emu_bfd(b)); }
static inline __nv_bfloat16 __hdiv(__nv_bfloat16 a, __nv_bfloat16 b) { return __float2bfloat16(__bfloat162float(a) / __bfloat162float(b)); }
static inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) { return __double2bfloat16(fma(emu_bfd(a), emu_bfd(b), emu_bfd(c))); }
static inline __nv_bfloat16 __hneg(__nv_bfloat16 a) { return emu_bf_bits((unsigned short)(a.__x ^ 0x8000u)); }
static inline __nv_bfloat16 __habs(__nv_bfloat16 a) { return emu_bf_bits((unsigned short)(a.__x & 0x7fffu)); }
static inline __nv_bfloat16 __hmax(__nv_bfloat16 a, __nv_bfloat16 b) { return __float2bfloat16(fmaxf(__bfloat162float(a), __bfloat162float(b))); }
static inline __nv_bfloat16 __hmin(__nv_bfloat16 a, __nv_bfloat16 b) { return __float2bfloat16(fminf(__bfloat162float(a), __bfloat162float(b))); }
static inline bool __heq(__nv_bfloat16 a, __nv_bfloat16 b) { return emu_bfd(a) == emu_bfd(b); }
static inline bool __hlt(__nv_bfloat16 a, __nv_bfloat16 b) { return emu_bfd(a) < emu_bfd(b); }
static inline bool __hgt(__nv_bfloat16 a, __nv_bfloat16 b) { return emu_bfd(a) > emu_bfd(b); }
static inline bool __hisnan(__nv_bfloat16 a) { return (a.__x & 0x7fffu) > 0x7f80u; }
static inline __nv_bfloat162 __hadd2(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(__hadd(a.x, b.x), __hadd(a.y, b.y)); }
static inline __nv_bfloat162 __hsub2(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(__hsub(a.x, b.x), __hsub(a.y, b.y)); }
static inline __nv_bfloat162 __hmul2(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(__hmul(a.x, b.x), __hmul(a.y, b.y)); }
static inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c) { return __nv_bfloat162(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }
static inline float2 __bfloat1622float2(__nv_bfloat162 a) { float2 r; r.x = __low2float(a); r.y = __high2float(a); return r; }

static inline __nv_bfloat16 operator+(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __hadd(a, b); }
static inline __nv_bfloat16 operator-(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __hsub(a, b); }
static inline __nv_bfloat16 operator*(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __hmul(a, b); }
static inline __nv_bfloat16 operator/(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __hdiv(a, b); }
static inline __nv_bfloat16 &operator+=(__nv_bfloat16 &a, const __nv_bfloat16 &b) { return a = __hadd(a, b); }
static inline __nv_bfloat16 &operator-=(__nv_bfloat16 &a, const __nv_bfloat16 &b) { return a = __hsub(a, b); }
static inline __nv_bfloat16 &operator*=(__nv_bfloat16 &a, const __nv_bfloat16 &b) { return a = __hmul(a, b); }
static inline __nv_bfloat16 &operator/=(__nv_bfloat16 &a, const __nv_bfloat16 &b) { return a = __hdiv(a, b); }
static inline __nv_bfloat16 operator-(const __nv_bfloat16 &a) { return __hneg(a); }
static inline bool operator==(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __heq(a, b); }
static inline bool operator!=(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return !__heq(a, b); }
static inline bool operator<(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __hlt(a, b); }
static inline bool operator>(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __hgt(a, b); }
static inline bool operator<=(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return emu_bfd(a) <= emu_bfd(b); }
static inline bool operator>=(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return emu_bfd(a) >= emu_bfd(b); }
static inline __nv_bfloat162 operator+(const __nv_bfloat162 &a, const __nv_bfloat162 &b) { return __hadd2(a, b); }
static inline __nv_bfloat162 operator-(const __nv_bfloat162 &a, const __nv_bfloat162 &b) { return __hsub2(a, b); }
static inline __nv_bfloat162 operator*(const __nv_bfloat162 &a, const __nv_bfloat162 &b) { return __hmul2(a, b); }

/* ---- __half ---- */
struct __half_raw { unsigned short x; };
struct __half2_raw { unsigned short x, y; };

struct __half {
	unsigned short __x;
	__half() = default;
	__half(const __half_raw &r) : __x(r.x) {}
	__half(float f) : __x(emu_f2h_rn(f)) {}
	__half(double d) : __x(emu_d2h_rn(d)) {}
	__half(int i) : __x(emu_d2h_rn((double)i)) {}
	operator __half_raw() const { __half_raw r; r.x = __x; return r; }
	operator float() const { return emu_h2f(__x); }
	__half &operator=(const __half_raw &r) { __x = r.x; return *this; }
	__half &operator=(float f) { __x = emu_f2h_rn(f); return *this; }
	__half &operator=(double d) { __x = emu_d2h_rn(d); return *this; }
};
typedef __half half;

struct alignas(4) __half2 {
	__half x, y;
	__half2() = default;
	__half2(const __half &a, const __half &b) : x(a), y(b) {}
	__half2(const __half2_raw &r) { x.__x = r.x; y.__x = r.y; }
	operator __half2_raw() const { __half2_raw r; r.x = x.__x; r.y = y.__x; return r; }
};
typedef __half2 half2;

static inline __half emu_h_bits(unsigned short b) { __half h; h.__x = b; return h; }
static inline __half __float2half(float f) { return emu_h_bits(emu_f2h_rn(f)); }
static inline __half __float2half_rn(float f) { return emu_h_bits(emu_f2h_rn(f)); }
static inline __half __double2half(double d) { return emu_h_bits(emu_d2h_rn(d)); }
static inline float __half2float(__half h) { return emu_h2f(h.__x); }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline __half __ushort_as_half(unsigned short b) { return emu_h_bits(b); }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2(__float2half(a), __float2half(b)); }
static inline __half2 __float2half2_rn(float a) { return __half2(__float2half(a), __float2half(a)); }
static inline __half2 __halves2half2(__half a, __half b) { return __half2(a, b); }
static inline __half __low2half(__half2 a) { return a.x; }
static inline __half __high2half(__half2 a) { return a.y; }
static inline float __low2float(__half2 a) { return emu_h2f(a.x.__x); }
static inline float __high2float(__half2 a) { return emu_h2f(a.y.__x); }
static inline float2 __half22float2(__half2 a) { float2 r; r.x = __low2float(a); r.y = __high2float(a); return r; }

static inline double emu_hd(__half h) { return (double)emu_h2f(h.__x); }
static inline __half __hadd(__half a, __half b) { return __double2half(emu_hd(a) + emu_hd(b)); }
static inline __half __hsub(__half a, __half b) { return __double2half(emu_hd(a) - emu_hd(b)); }
static inline __half __hmul(__half a, __half b) { return __double2half(emu_hd(a) * emu_hd(b)); }
static inline __half __hdiv(__half a, __half b) { return __float2half(__half2float(a) / __half2float(b)); }
static inline __half __hfma(__half a, __half b, __half c) { return __double2half(fma(emu_hd(a), emu_hd(b), emu_hd(c))); }
static inline __half __hneg(__half a) { return emu_h_bits((unsigned short)(a.__x ^ 0x8000u)); }
static inline __half __habs(__half a) { return emu_h_bits((unsigned short)(a.__x & 0x7fffu)); }
static inline __half __hmax(__half a, __half b) { return __float2half(fmaxf(__half2float(a), __half2float(b))); }
static inline __half __hmin(__half a, __half b) { return __float2half(fminf(__half2float(a), __half2float(b))); }
static inline bool __heq(__half a, __half b) { return emu_hd(a) == emu_hd(b); }
static inline bool __hlt(__half a, __half b) { return emu_hd(a) < emu_hd(b); }
static inline bool __hgt(__half a, __half b) { return emu_hd(a) > emu_hd(b); }
static inline bool __hisnan(__half a) { return (a.__x & 0x7fffu) > 0x7c00u; }
static inline __half2 __hadd2(__half2 a, __half2 b) { return __half2(__hadd(a.x, b.x), __hadd(a.y, b.y)); }
static inline __half2 __hmul2(__half2 a, __half2 b) { return __half2(__hmul(a.x, b.x), __hmul(a.y, b.y)); }
static inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return __half2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }

static inline __half operator+(const __half &a, const __half &b) { return __hadd(a, b); }
static inline __half operator-(const __half &a, const __half &b) { return __hsub(a, b); }
static inline __half operator*(const __half &a, const __half &b) { return __hmul(a, b); }
static inline __half operator/(const __half &a, const __half &b) { return __hdiv(a, b); }
static inline __half &operator+=(__half &a, const __half &b) { return a = __hadd(a, b); }
static inline __half &operator-=(__half &a, const __half &b) { return a = __hsub(a, b); }
static inline __half &operator*=(__half &a, const __half &b) { return a = __hmul(a, b); }
static inline __half operator-(const __half &a) { return __hneg(a); }
static inline bool operator==(const __half &a, const __half &b) { return __heq(a, b); }
static inline bool operator!=(const __half &a, const __half &b) { return !__heq(a, b); }
static inline bool operator<(const __half &a, const __half &b) { return __hlt(a, b); }
static inline bool operator>(const __half &a, const __half &b) { return __hgt(a, b); }
static inline __half2 operator+(const __half2 &a, const __half2 &b) { return __hadd2(a, b); }
static inline __half2 operator*(const __half2 &a, const __half2 &b) { return __hmul2(a, b); }

#endif
