// Scalar IEEE half / bfloat16 <-> float conversions on raw bits.
//
// Everything here is `static inline` on purpose: this header is included by the
// per-ISA kernel translation units, which are compiled with different -m flags,
// so no function may be shared between them through the linker (ODR/COMDAT).
#pragma once

#include <cstdint>
#include <cstring>

namespace wina {

static inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

static inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// Exact conversion of an IEEE binary16 value (subnormals, inf and NaN included).
static inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t o = static_cast<uint32_t>(h & 0x7fffu) << 13;  // exponent and mantissa
  const uint32_t exp = o & 0x0f800000u;
  o += (127u - 15u) << 23;  // rebias the exponent
  if (exp == 0x0f800000u) {
    o += (128u - 16u) << 23;  // inf / NaN: exponent all ones
  } else if (exp == 0) {
    o += 1u << 23;  // zero / subnormal: renormalise through a float subtraction
    o = float_to_bits(bits_to_float(o) - bits_to_float(113u << 23));
  }
  return bits_to_float(o | sign);
}

// float -> binary16, rounding to nearest even; NaN stays a (quiet) NaN.
static inline uint16_t float_to_half_bits(float value) {
  uint32_t f = float_to_bits(value);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint32_t o;
  if (f >= (127u + 16u) << 23) {                     // overflow, inf or NaN
    o = f > (255u << 23) ? 0x7e00u : 0x7c00u;
  } else if (f < (113u << 23)) {                     // result is subnormal or zero
    const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    o = float_to_bits(bits_to_float(f) + bits_to_float(magic)) - magic;
  } else {                                           // normal: round the mantissa
    const uint32_t mant_odd = (f >> 13) & 1u;
    f += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;
    f += mant_odd;
    o = f >> 13;
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

static inline float bf16_bits_to_float(uint16_t b) {
  return bits_to_float(static_cast<uint32_t>(b) << 16);
}

// float -> bfloat16, rounding to nearest even; NaN stays a (quiet) NaN.
static inline uint16_t float_to_bf16_bits(float value) {
  const uint32_t f = float_to_bits(value);
  if ((f & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((f >> 16) | 0x40u);
  return static_cast<uint16_t>((f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
}

}  // namespace wina
