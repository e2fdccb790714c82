/* CPU kernels of the Mamba mixer's two sequence ops, each reset-aware: the selective scan and the causal
   depthwise conv. One pass per (batch, channel) row; called via ctypes from resel_train/ops/cpu_kernel.py,
   which builds this file at first use with the system C compiler (no Python or torch headers needed).

   Selective scan, with the state in registers:

   h_t = (reset_t ? 0 : exp(dt_t * A)) * h_{t-1} + dt_t * u_t * B_t,     y_t = C_t . h_t

   Layouts (all float32, contiguous): u, dt, y, du, ddt: (batch, d_inner, L); A, A2 (= A * log2 e), dA:
   (d_inner, d_state); B, C, dB, dC: (batch, L, d_state); h0, last, dlast, dh0: (batch, d_inner, d_state);
   reset: (batch, L) bytes. Optional inputs are NULL. Rows [row_begin, row_end) of batch * d_inner are
   processed, so callers can split the rows over threads; the backward sums dA over the batch and dB, dC
   over the channels of a row range, so each thread needs its own. The backward recomputes the row's states (L * d_state floats
   of scratch per call) rather than storing them in the forward. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* 2^x for x <= 0 (decays): Cephes' exp2f polynomial on [-1/2, 1/2] and an exponent built from bits,
   written so the compiler vectorises it (relative error < 2e-7; x below -126 returns 2^-126). */
static inline float exp2_neg(float x) {
    x = x < -126.0f ? -126.0f : x;
    float i = __builtin_floorf(x + 0.5f);
    float f = x - i;
    float p = 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    int32_t bits = ((int32_t)i + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

void resel_scan_forward(const float *u, const float *dt, const float *A2, const float *B, const float *C,
                        const uint8_t *reset, const float *h0, float *y, float *last,
                        int64_t batch, int64_t d_inner, int64_t length, int64_t d_state,
                        int64_t row_begin, int64_t row_end) {
    (void)batch;
    float *h = malloc(sizeof(float) * d_state);
    for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t b = row / d_inner, d = row % d_inner;
        const float *u_r = u + row * length, *dt_r = dt + row * length, *a2 = A2 + d * d_state;
        const float *B_b = B + b * length * d_state, *C_b = C + b * length * d_state;
        const uint8_t *reset_b = reset ? reset + b * length : NULL;
        float *y_r = y + row * length;
        if (h0) memcpy(h, h0 + row * d_state, sizeof(float) * d_state);
        else memset(h, 0, sizeof(float) * d_state);
        for (int64_t t = 0; t < length; ++t) {
            const float delta = dt_r[t], x = delta * u_r[t];
            const float keep = (reset_b && reset_b[t]) ? 0.0f : 1.0f;
            const float *B_t = B_b + t * d_state, *C_t = C_b + t * d_state;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t n = 0; n < d_state; ++n) {
                const float decay = keep * exp2_neg(delta * a2[n]);
                h[n] = decay * h[n] + x * B_t[n];
                acc += C_t[n] * h[n];
            }
            y_r[t] = acc;
        }
        if (last) memcpy(last + row * d_state, h, sizeof(float) * d_state);
    }
    free(h);
}

void resel_scan_backward(const float *u, const float *dt, const float *A, const float *A2, const float *B,
                         const float *C, const uint8_t *reset, const float *h0, const float *dy,
                         const float *dlast, float *du, float *ddt, float *dA, float *dB, float *dC, float *dh0,
                         int64_t batch, int64_t d_inner, int64_t length, int64_t d_state,
                         int64_t row_begin, int64_t row_end) {
    (void)batch;
    float *states = malloc(sizeof(float) * (length + 1) * d_state); /* row 0: h_{-1}; row t + 1: h_t */
    float *g = malloc(sizeof(float) * d_state);
    for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t b = row / d_inner, d = row % d_inner;
        const float *u_r = u + row * length, *dt_r = dt + row * length, *dy_r = dy + row * length;
        const float *a = A + d * d_state, *a2 = A2 + d * d_state;
        const float *B_b = B + b * length * d_state, *C_b = C + b * length * d_state;
        float *dB_b = dB + b * length * d_state, *dC_b = dC + b * length * d_state, *dA_d = dA + d * d_state;
        const uint8_t *reset_b = reset ? reset + b * length : NULL;
        if (h0) memcpy(states, h0 + row * d_state, sizeof(float) * d_state);
        else memset(states, 0, sizeof(float) * d_state);
        for (int64_t t = 0; t < length; ++t) { /* recompute the states */
            const float delta = dt_r[t], x = delta * u_r[t];
            const float keep = (reset_b && reset_b[t]) ? 0.0f : 1.0f;
            const float *B_t = B_b + t * d_state, *prev = states + t * d_state;
            float *h = states + (t + 1) * d_state;
#pragma omp simd
            for (int64_t n = 0; n < d_state; ++n) h[n] = keep * exp2_neg(delta * a2[n]) * prev[n] + x * B_t[n];
        }
        if (dlast) memcpy(g, dlast + row * d_state, sizeof(float) * d_state);
        else memset(g, 0, sizeof(float) * d_state);
        for (int64_t t = length - 1; t >= 0; --t) { /* g: grad w.r.t. h_t, then h_{t-1} */
            const float delta = dt_r[t], uu = u_r[t], x = delta * uu, gy = dy_r[t];
            const float keep = (reset_b && reset_b[t]) ? 0.0f : 1.0f;
            const float *B_t = B_b + t * d_state, *C_t = C_b + t * d_state;
            const float *h = states + (t + 1) * d_state, *prev = states + t * d_state;
            float *dB_t = dB_b + t * d_state, *dC_t = dC_b + t * d_state;
            float g_x = 0.0f, g_delta = 0.0f;
#pragma omp simd reduction(+ : g_x, g_delta)
            for (int64_t n = 0; n < d_state; ++n) {
                const float gn = g[n] + gy * C_t[n];
                const float decay = keep * exp2_neg(delta * a2[n]);
                const float g_log_decay = gn * prev[n] * decay; /* grad w.r.t. dt_t * A[n] */
                dC_t[n] += gy * h[n];
                dB_t[n] += gn * x;
                g_x += gn * B_t[n];
                g_delta += g_log_decay * a[n];
                dA_d[n] += g_log_decay * delta;
                g[n] = gn * decay;
            }
            du[row * length + t] = g_x * delta;
            ddt[row * length + t] = g_x * uu + g_delta;
        }
        if (dh0) memcpy(dh0 + row * d_state, g, sizeof(float) * d_state);
    }
    free(g);
    free(states);
}

/* Causal depthwise conv, y_t = bias + sum_j w_j x_{t-(k-1)+j} over the taps at or after the latest reset
   at or before t (before any reset, the k-1 earlier inputs in hist count as times -(k-1)..-1).
   x, y, dx, dy: (batch, dim, L); w, dw: (dim, k); bias, dbias: (dim); hist, dhist: (batch, dim, k-1);
   final, dfinal: (batch, dim, k-1), the window carried to the next call (zero before the latest reset).
   The backward accumulates dw and dbias over the batch, so row ranges on different threads need their own. */
static inline float tap_value(const float *x_r, const float *hist_r, int64_t tt, int64_t k) {
    return tt >= 0 ? x_r[tt] : (hist_r ? hist_r[tt + k - 1] : 0.0f);
}

void resel_conv_forward(const float *x, const float *w, const float *bias, const uint8_t *reset, const float *hist,
                        float *y, float *final, int64_t dim, int64_t length, int64_t k,
                        int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t b = row / dim, d = row % dim;
        const float *x_r = x + row * length, *w_d = w + d * k, *hist_r = hist ? hist + row * (k - 1) : NULL;
        const uint8_t *reset_b = reset ? reset + b * length : NULL;
        float *y_r = y + row * length;
        int64_t start = -k; /* time of the latest reset; -k: none, the history window counts */
        for (int64_t t = 0; t < length; ++t) {
            if (reset_b && reset_b[t]) start = t;
            float acc = bias ? bias[d] : 0.0f;
            for (int64_t j = 0; j < k; ++j) {
                const int64_t tt = t - (k - 1) + j;
                if (tt >= start) acc += w_d[j] * tap_value(x_r, hist_r, tt, k);
            }
            y_r[t] = acc;
        }
        for (int64_t i = 0; i < k - 1; ++i) {
            const int64_t tt = length - (k - 1) + i;
            final[row * (k - 1) + i] = tt >= start ? tap_value(x_r, hist_r, tt, k) : 0.0f;
        }
    }
}

void resel_conv_backward(const float *x, const float *w, const uint8_t *reset, const float *hist, const float *dy,
                         const float *dfinal, float *dx, float *dw, float *dbias, float *dhist,
                         int64_t dim, int64_t length, int64_t k, int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t b = row / dim, d = row % dim;
        const float *x_r = x + row * length, *w_d = w + d * k, *dy_r = dy + row * length;
        const float *hist_r = hist ? hist + row * (k - 1) : NULL;
        const uint8_t *reset_b = reset ? reset + b * length : NULL;
        float *dx_r = dx + row * length, *dw_d = dw + d * k, *dhist_r = dhist ? dhist + row * (k - 1) : NULL;
        memset(dx_r, 0, sizeof(float) * length);
        if (dhist_r) memset(dhist_r, 0, sizeof(float) * (k - 1));
        int64_t start = -k;
        float g_bias = 0.0f;
        for (int64_t t = 0; t < length; ++t) {
            if (reset_b && reset_b[t]) start = t;
            const float g = dy_r[t];
            g_bias += g;
            for (int64_t j = 0; j < k; ++j) {
                const int64_t tt = t - (k - 1) + j;
                if (tt < start) continue;
                dw_d[j] += g * tap_value(x_r, hist_r, tt, k);
                if (tt >= 0) dx_r[tt] += g * w_d[j];
                else if (dhist_r) dhist_r[tt + k - 1] += g * w_d[j];
            }
        }
        if (dbias) dbias[d] += g_bias;
        if (dfinal) {
            for (int64_t i = 0; i < k - 1; ++i) {
                const int64_t tt = length - (k - 1) + i;
                if (tt < start) continue;
                if (tt >= 0) dx_r[tt] += dfinal[row * (k - 1) + i];
                else if (dhist_r) dhist_r[tt + k - 1] += dfinal[row * (k - 1) + i];
            }
        }
    }
}
