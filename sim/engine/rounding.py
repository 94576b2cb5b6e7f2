"""Rounding to the chip's element types, by bit manipulation, inside compiled code.

The reference rounds with NumPy (`astype(np.float16)`) and ml_dtypes (`astype(bfloat16)`,
`astype(float8_e4m3fn)`); these helpers reproduce those conversions bit for bit, round to nearest
even included, so the engine needs no NumPy casts of exotic dtypes in its kernels. Arithmetic is
on int64 copies of the bits (Numba would turn mixed uint32/int64 arithmetic into float64). The
semantics of each element type are in the table of sim/isa.py.
"""

from __future__ import annotations

import numpy as np

from sim.engine.flags import njit, njit_inline
from sim.isa import DType

FLOAT16 = int(DType.FLOAT16)
BFLOAT16 = int(DType.BFLOAT16)
BOOL = int(DType.BOOL)
INT8 = int(DType.INT8)
FP8E4M3 = int(DType.FP8E4M3)


@njit_inline
def _round_half_even(mantissa, shift):
    """mantissa / 2**shift rounded to the nearest integer, ties to even (shift >= 1)."""
    q = mantissa >> shift
    rest = mantissa & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rest > half or (rest == half and q & 1):
        q += 1
    return q


@njit_inline
def _narrow(a, mantissa_bits, bias):
    """Finite, in-range |binary32| bits a -> the bits of a smaller binary float (`mantissa_bits`,
    exponent `bias`), rounded to nearest even; a carry into the exponent is right."""
    lowest = 128 - bias  # the binary32 exponent field of the smaller type's smallest normal
    shift = 23 - mantissa_bits
    exponent = a >> 23
    if exponent >= lowest:  # a normal: rebias the exponent, round 23 -> mantissa_bits bits
        return _round_half_even(((exponent - lowest + 1) << 23) | (a & 0x7FFFFF), shift)
    if exponent < lowest - mantissa_bits - 1:  # below half the smallest subnormal: zero
        return 0
    # A subnormal counts units of 2**(1 - bias - mantissa_bits); a = mantissa * 2**(exponent - 150).
    return _round_half_even((a & 0x7FFFFF) | 0x800000, lowest + shift - exponent)


@njit_inline
def _widen(exponent, mantissa, mantissa_bits, bias):
    """A smaller binary float's finite magnitude (exponent and mantissa fields) -> binary32 bits,
    exactly."""
    shift = 23 - mantissa_bits
    if exponent:
        return ((exponent + 127 - bias) << 23) | (mantissa << shift)
    if mantissa == 0:
        return 0
    exponent = 128 - bias  # normalise the subnormal: mantissa * 2**(1 - bias - mantissa_bits)
    while not mantissa & (1 << mantissa_bits):
        mantissa <<= 1
        exponent -= 1
    return (exponent << 23) | ((mantissa & ((1 << mantissa_bits) - 1)) << shift)


@njit_inline
def f32_bits_to_f16_bits(f):
    """IEEE binary32 bits -> binary16 bits, as NumPy's float32 -> float16 cast."""
    sign = (f >> 16) & 0x8000
    a = f & 0x7FFFFFFF
    if a > 0x7F800000:  # NaN: keep the top 10 payload bits, but stay a NaN (NumPy's rule)
        payload = (a >> 13) & 0x3FF
        return sign | 0x7C00 | (payload if payload else 1)
    if a >= 0x477FF000:  # inf, or >= 65520 which rounds past the largest half (65504)
        return sign | 0x7C00
    return sign | _narrow(a, 10, 15)


@njit_inline
def f16_bits_to_f32_bits(h):
    """binary16 bits -> binary32 bits (exact; NaN payloads kept, as NumPy)."""
    sign = (h & 0x8000) << 16
    exponent = (h >> 10) & 0x1F
    mantissa = h & 0x3FF
    if exponent == 0x1F:
        return sign | 0x7F800000 | (mantissa << 13)
    return sign | _widen(exponent, mantissa, 10, 15)


@njit_inline
def f32_bits_to_bf16_bits(f):
    """binary32 bits -> bfloat16 bits, as ml_dtypes: round to nearest even, canonical NaN."""
    if (f & 0x7FFFFFFF) > 0x7F800000:
        return ((f >> 16) & 0x8000) | 0x7FC0
    return (f + 0x7FFF + ((f >> 16) & 1)) >> 16  # a carry into the exponent is right, up to inf


@njit_inline
def f32_bits_to_f8e4m3_bits(f):
    """binary32 bits -> float8_e4m3fn bits (bias 7, 3 mantissa bits, exponent 15 with mantissa 7
    the only NaN, no inf), as ml_dtypes: round to nearest even, overflow and inf to NaN."""
    sign = (f >> 24) & 0x80
    a = f & 0x7FFFFFFF
    if a > 0x43E80000:  # NaN, inf, or above 464 (halfway from 448, the largest, to 480): NaN
        return sign | 0x7F
    return sign | _narrow(a, 3, 7)


@njit_inline
def f8e4m3_bits_to_f32_bits(b):
    """float8_e4m3fn bits -> binary32 bits (exact; NaN -> the quiet NaN, as ml_dtypes)."""
    sign = (b & 0x80) << 24
    exponent = (b >> 3) & 0xF
    mantissa = b & 0x7
    if exponent == 0xF and mantissa == 0x7:
        return sign | 0x7FC00000
    return sign | _widen(exponent, mantissa, 3, 7)


@njit_inline
def round_int8(x):
    """float32 -> the nearest int8 (ties to even, saturating, NaN -> 0) as a float32: the
    reference's rule, since NumPy leaves float -> int8 casts of NaN and large values undefined."""
    if x != x:
        return np.float32(0.0)
    r = np.rint(min(max(x, np.float32(-128.0)), np.float32(127.0)))
    return r if r != 0 else np.float32(0.0)  # an int8 zero has no sign


@njit
def quiet_nans(v):
    """Set the quiet bit of every signalling NaN in the float32 array v (in place): what passing
    through float64, as the reference does with every stored value, does on x86 and ARM."""
    bits = v.view(np.uint32)
    for k in range(v.size):
        b = np.int64(bits[k])
        if b & 0x7FFFFFFF > 0x7F800000:
            bits[k] = np.uint32(b | 0x00400000)


@njit
def round_vector(v, code):
    """Round the float32 vector `v` in place to element type `code`, kept as float32 (the storage
    format of every vector, as `_round` in sim/reference.py)."""
    if code == FLOAT16:
        bits = v.view(np.uint32)
        for k in range(v.size):
            h = f32_bits_to_f16_bits(np.int64(bits[k]))
            bits[k] = np.uint32(f16_bits_to_f32_bits(h))
    elif code == BFLOAT16:
        bits = v.view(np.uint32)
        for k in range(v.size):
            bits[k] = np.uint32(f32_bits_to_bf16_bits(np.int64(bits[k])) << 16)
    elif code == BOOL:
        for k in range(v.size):
            v[k] = 1.0 if v[k] != 0 else 0.0
    elif code == INT8:
        for k in range(v.size):
            v[k] = round_int8(v[k])
    elif code == FP8E4M3:
        bits = v.view(np.uint32)
        for k in range(v.size):
            b = f32_bits_to_f8e4m3_bits(np.int64(bits[k]))
            bits[k] = np.uint32(f8e4m3_bits_to_f32_bits(b))
