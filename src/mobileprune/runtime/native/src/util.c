/* Small helpers of the loader: CRC-32 (zlib's), float16 decoding, typed array reads. */
#include <math.h>

#include "internal.h"

/* CRC-32 with zlib's parameters: reflected polynomial 0xEDB88320, initial value and final
 * xor 0xFFFFFFFF. The table is computed on the stack per call (256 entries, about a
 * microsecond), so the library keeps no global state. */
uint32_t mp_crc32(const uint8_t* data, size_t n) {
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

/* IEEE binary16 -> binary32, exact (subnormals, infinities and NaN included). */
float mp_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1Fu) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else {
        float f = ldexpf((float)man, -24); /* zero or subnormal: man * 2^-24, exact */
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

size_t mp_dtype_size(uint32_t dtype) {
    switch (dtype) {
    case MP_DT_F32: case MP_DT_U32: case MP_DT_I32: return 4;
    case MP_DT_F16: case MP_DT_U16: return 2;
    default: return 0;
    }
}

const char* mp_dtype_name(uint32_t dtype) {
    switch (dtype) {
    case MP_DT_F32: return "float32";
    case MP_DT_F16: return "float16";
    case MP_DT_U16: return "uint16";
    case MP_DT_U32: return "uint32";
    case MP_DT_I32: return "int32";
    default: return "unknown";
    }
}

float mp_array_float(const mp_array* a, uint64_t i) {
    if (a->dtype == MP_DT_F16) return mp_half_to_float(mp_rd_u16(a->data + 2 * i));
    return mp_rd_f32(a->data + 4 * i);
}

uint64_t mp_array_uint(const mp_array* a, uint64_t i) {
    if (a->dtype == MP_DT_U16) return mp_rd_u16(a->data + 2 * i);
    return mp_rd_u32(a->data + 4 * i);
}
