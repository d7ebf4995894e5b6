// Elementary functions of the pointwise ops (shaders/unary.comp, binary.comp, binary_const.comp), written to
// follow ddpm_core's libm-based definitions (core/src/ops/pointwise.rs) where GLSL's built-ins differ: erf is
// musl's erff (FreeBSD s_erff.c) term for term, tanh, expm1 and log1p avoid cancellation, pow takes negative
// bases with integer exponents as powf does. exp, log, sqrt, sin and cos are the device's (last bits differ).
// Needs codes.glsl.

#define INF uintBitsToFloat(0x7f800000u)
#define NAN uintBitsToFloat(0x7fc00000u)

// e^x − 1 without cancellation near 0 (Kahan: the rounding error of e^x cancels in (u − 1)/log u).
float expm1_1(float x) {
    precise float u = exp(x);
    if (u == 1.0) return x;
    precise float um1 = u - 1.0;
    if (um1 == -1.0) return -1.0;
    if (isinf(u)) return u;
    precise float r = um1 * x / log(u);
    return r;
}

// ln(1 + x) without cancellation near 0 (Goldberg: the rounding error of 1 + x cancels in x / ((1 + x) − 1)).
float log1p1(float x) {
    precise float u = 1.0 + x;
    if (u == 1.0) return x;
    if (isinf(u)) return u;
    precise float d = u - 1.0;
    precise float r = log(u) * x / d;
    return r;
}

// tanh as musl's tanhf writes it: t/(t + 2) of t = e^(2|x|) − 1, the sign restored (±1 past |x| = 9).
float tanh1(float x) {
    float ax = abs(x);
    float r = ax > 9.0 ? 1.0 : expm1_1(2.0 * ax);
    if (ax <= 9.0) r = r / (r + 2.0);
    return x < 0.0 ? -r : r;
}

// erf: musl's erff (see the file comment), with its coefficients.
float erfc1_part(float x) {
    float s = abs(x) - 1.0;
    float pv = -2.3621185683e-03 + s * (4.1485610604e-01 + s * (-3.7220788002e-01 + s * (3.1834661961e-01
        + s * (-1.1089469492e-01 + s * (3.5478305072e-02 + s * -2.1663755178e-03)))));
    float qv = 1.0 + s * (1.0642088205e-01 + s * (5.4039794207e-01 + s * (7.1828655899e-02 + s * (1.2617121637e-01
        + s * (1.3637083583e-02 + s * 1.1984500103e-02)))));
    return 1.0 - 8.4506291151e-01 - pv / qv;
}

float erfc2_part(uint ix, float x) {
    if (ix < 0x3fa00000u) return erfc1_part(x);
    x = abs(x);
    float s = 1.0 / (x * x);
    float r;
    float big_s;
    if (ix < 0x4036db6du) {
        r = -9.8649440333e-03 + s * (-6.9385856390e-01 + s * (-1.0558626175e+01 + s * (-6.2375331879e+01
            + s * (-1.6239666748e+02 + s * (-1.8460508728e+02 + s * (-8.1287437439e+01 + s * -9.8143291473e+00))))));
        big_s = 1.0 + s * (1.9651271820e+01 + s * (1.3765776062e+02 + s * (4.3456588745e+02 + s * (6.4538726807e+02
            + s * (4.2900814819e+02 + s * (1.0863500214e+02 + s * (6.5702495575e+00 + s * -6.0424413532e-02)))))));
    } else {
        r = -9.8649431020e-03 + s * (-7.9928326607e-01 + s * (-1.7757955551e+01 + s * (-1.6063638306e+02
            + s * (-6.3756646729e+02 + s * (-1.0250950928e+03 + s * -4.8351919556e+02)))));
        big_s = 1.0 + s * (3.0338060379e+01 + s * (3.2579251099e+02 + s * (1.5367296143e+03 + s * (3.1998581543e+03
            + s * (2.5530502930e+03 + s * (4.7452853394e+02 + s * -2.2440952301e+01))))));
    }
    float z = uintBitsToFloat(floatBitsToUint(x) & 0xffffe000u);
    return exp(-z * z - 0.5625) * exp((z - x) * (z + x) + r / big_s) / x;
}

float erf1(float x) {
    uint ix = floatBitsToUint(x) & 0x7fffffffu;
    bool neg = (floatBitsToUint(x) >> 31) != 0u;
    if (ix >= 0x7f800000u) return isnan(x) ? x : (neg ? -1.0 : 1.0);
    if (ix < 0x3f580000u) {
        if (ix < 0x31800000u) return 0.125 * (8.0 * x + 1.0270333290e+00 * x);
        float z = x * x;
        float r = 1.2837916613e-01 + z * (-3.2504209876e-01 + z * (-2.8481749818e-02 + z * (-5.7702702470e-03
            + z * -2.3763017452e-05)));
        float s = 1.0 + z * (3.9791721106e-01 + z * (6.5022252500e-02 + z * (5.0813062117e-03 + z * (1.3249473704e-04
            + z * -3.9602282413e-06))));
        return x + x * (r / s);
    }
    float y = ix < 0x40c00000u ? 1.0 - erfc2_part(ix, x) : 1.0;
    return neg ? -y : y;
}

// x^y as powf: exact for the exponents graphs use most (1, 2, 0.5, 0, −1), negative bases with integer exponents
// signed by the exponent's parity, NaN for a negative base with a fractional exponent.
float pow1(float x, float y) {
    if (y == 0.0 || x == 1.0) return 1.0;
    if (y == 1.0) return x;
    if (y == 2.0) return x * x;
    if (y == 0.5 && x >= 0.0) return sqrt(x);
    if (y == -1.0) return 1.0 / x;
    if (isnan(x) || isnan(y)) return NAN;
    bool odd = floor(y) == y && abs(y) < 16777216.0 && mod(y, 2.0) == 1.0;
    if (x == 0.0) {
        float r = y < 0.0 ? INF : 0.0;
        return odd && floatBitsToUint(x) != 0u ? -r : r;
    }
    if (x < 0.0 && floor(y) != y) return NAN;
    float r = exp2(y * log2(abs(x)));
    return x < 0.0 && odd ? -r : r;
}

// UnaryFn::apply.
float unary_fn(uint kind, float x, float pa, float pb) {
    switch (kind) {
    case UNARY_RELU: return max(x, 0.0);
    case UNARY_LEAKY_RELU: return x >= 0.0 ? x : pa * x;
    case UNARY_SIGMOID: return 1.0 / (1.0 + exp(-x));
    case UNARY_TANH: return tanh1(x);
    case UNARY_GELU: return 0.5 * x * (1.0 + erf1(x * 0.70710678118654752));
    case UNARY_GELU_TANH: return 0.5 * x * (1.0 + tanh1(0.7978846 * (x + 0.044715 * x * x * x)));
    case UNARY_EXP: return exp(x);
    case UNARY_LOG: return log(x);
    case UNARY_SQRT: return sqrt(x);
    case UNARY_ABS: return abs(x);
    case UNARY_NEG: return -x;
    case UNARY_SIN: return sin(x);
    case UNARY_COS: return cos(x);
    case UNARY_ERF: return erf1(x);
    case UNARY_HARD_SIGMOID: return clamp(pa * x + pb, 0.0, 1.0);
    case UNARY_CLIP: return min(max(x, pa), pb);
    case UNARY_RECIPROCAL: return 1.0 / x;
    case UNARY_SOFTPLUS: return x > 20.0 ? x : log1p1(exp(x));
    }
    return NAN;
}

// BinaryFn::apply.
float binary_fn(uint kind, float x, float y) {
    switch (kind) {
    case BINARY_ADD: return x + y;
    case BINARY_SUB: return x - y;
    case BINARY_MUL: return x * y;
    case BINARY_DIV: return x / y;
    case BINARY_POW: return pow1(x, y);
    case BINARY_MIN: return min(x, y);
    case BINARY_MAX: return max(x, y);
    }
    return NAN;
}

// Offset of element (i0, i1, i2) of [d0, d1, d2] in an operand broadcast along the dimensions whose bit is set in
// `bc` (ops::Broadcast: stride 0 there, row-major over the spanned extents).
uint broadcast_index(uint bc, uvec3 d, uvec3 i) {
    uvec3 ext = uvec3((bc & 1u) != 0u ? 1u : d.x, (bc & 2u) != 0u ? 1u : d.y, (bc & 4u) != 0u ? 1u : d.z);
    uvec3 on = uvec3((bc & 1u) != 0u ? 0u : 1u, (bc & 2u) != 0u ? 0u : 1u, (bc & 4u) != 0u ? 0u : 1u);
    return i.x * on.x * ext.y * ext.z + i.y * on.y * ext.z + i.z * on.z;
}
