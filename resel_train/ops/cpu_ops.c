/* CPU kernels of the encoders' sequence ops, each reset-aware: the Mamba mixer's selective scan and causal
   depthwise conv, and the GRU recurrence. Called via ctypes from resel_train/ops/cpu_kernel.py, which
   builds this file at first use with the system C compiler (no Python or torch headers needed).

   Selective scan, with the state in registers:

   h_t = (reset_t ? 0 : exp(dt_t * A)) * h_{t-1} + dt_t * u_t * B_t,     y_t = C_t . h_t

   Layouts (all float32, contiguous but B and C): u, dt, y, du, ddt: (batch, d_inner, L); A, dA: (d_inner,
   d_state), the kernels taking exp(dt A) as 2^(dt A log2 e); B, C: (batch, L, d_state) with row_B, row_C floats from one step to the next (a
   slice of a wider projection is read in place); dB, dC: (batch, L, d_state); h0, last, dlast, dh0: (batch,
   d_inner, d_state); reset: (batch, L) bytes. Optional inputs are NULL. Callers split the work over threads by ranges of
   blocks of (batch row, 16 channels); the backward sums dA over the batch and dB, dC over the channels
   of its blocks, so each thread needs its own. The backward recomputes the states rather than storing them
   in the forward. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* 2^x, x clamped to [-126, 126]: Cephes' exp2f polynomial on [-1/2, 1/2] and an exponent built from bits,
   written so the compiler vectorises it (relative error < 2e-7). */
static inline float exp2_clamped(float x) {
    x = x < -126.0f ? -126.0f : (x > 126.0f ? 126.0f : x);
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

/* Forward: the state of 16 consecutive channels is held as (d_state, 16 lanes), so every step is 16-wide
   vector work with no horizontal sums, whatever d_state is (per channel, the sum over d_state at every step
   dominates when d_state is small). Lanes past d_inner run on zeros and are dropped. Work is split into
   blocks of (batch row, 16 channels); [block_begin, block_end) of the batch * ceil(d_inner / 16) blocks
   are processed per call. */
#define LANES 16

typedef struct {
    float *u, *dt, *a2, *h; /* (L, LANES) x2, (d_state, LANES) x2 */
} Lanes;

/* Gather a block's channels into lane-major buffers (zeros in unused lanes). */
static void load_lanes(Lanes *l, const float *u, const float *dt, const float *A, const float *h0,
                       int64_t b, int64_t d0, int64_t lanes, int64_t d_inner, int64_t length, int64_t d_state) {
    memset(l->u, 0, sizeof(float) * length * LANES);
    memset(l->dt, 0, sizeof(float) * length * LANES);
    memset(l->a2, 0, sizeof(float) * d_state * LANES);
    memset(l->h, 0, sizeof(float) * d_state * LANES);
    for (int64_t w = 0; w < lanes; ++w) {
        const int64_t row = b * d_inner + d0 + w;
        for (int64_t t = 0; t < length; ++t) {
            l->u[t * LANES + w] = u[row * length + t];
            l->dt[t * LANES + w] = dt[row * length + t];
        }
        for (int64_t n = 0; n < d_state; ++n) {
            l->a2[n * LANES + w] = A[(d0 + w) * d_state + n] * 1.4426950408889634f; /* A log2 e */
            if (h0) l->h[n * LANES + w] = h0[row * d_state + n];
        }
    }
}

/* h <- the state after step t from the state before it; y_out (LANES) gets C_t . h. */
static inline void lanes_step(float *h, const Lanes *l, const float *B_t, const float *C_t, float keep, int64_t t,
                              int64_t d_state, float *y_out) {
    const float *dt_l = l->dt + t * LANES, *u_l = l->u + t * LANES;
    float x[LANES], acc[LANES];
    for (int w = 0; w < LANES; ++w) {
        x[w] = dt_l[w] * u_l[w];
        acc[w] = 0.0f;
    }
    for (int64_t n = 0; n < d_state; ++n) {
        const float Bn = B_t[n], Cn = C_t[n];
        float *h_n = h + n * LANES;
        const float *a2_n = l->a2 + n * LANES;
#pragma omp simd
        for (int w = 0; w < LANES; ++w) {
            h_n[w] = keep * exp2_clamped(dt_l[w] * a2_n[w]) * h_n[w] + x[w] * Bn;
            acc[w] += Cn * h_n[w];
        }
    }
    memcpy(y_out, acc, sizeof acc);
}

static Lanes alloc_lanes(int64_t length, int64_t d_state) {
    Lanes l = {malloc(sizeof(float) * length * LANES), malloc(sizeof(float) * length * LANES),
               malloc(sizeof(float) * d_state * LANES), malloc(sizeof(float) * d_state * LANES)};
    return l;
}

static void free_lanes(Lanes *l) {
    free(l->u);
    free(l->dt);
    free(l->a2);
    free(l->h);
}

void resel_scan_forward(const float *u, const float *dt, const float *A, const float *B, const float *C,
                        const uint8_t *reset, const float *h0, float *y, float *last,
                        int64_t batch, int64_t d_inner, int64_t length, int64_t d_state, int64_t row_B,
                        int64_t row_C, int64_t block_begin, int64_t block_end) {
    (void)batch;
    const int64_t per_row = (d_inner + LANES - 1) / LANES;
    Lanes l = alloc_lanes(length, d_state);
    float *y_l = malloc(sizeof(float) * length * LANES);
    for (int64_t blk = block_begin; blk < block_end; ++blk) {
        const int64_t b = blk / per_row, d0 = (blk % per_row) * LANES;
        const int64_t lanes = d_inner - d0 < LANES ? d_inner - d0 : LANES;
        const float *B_b = B + b * length * row_B, *C_b = C + b * length * row_C;
        const uint8_t *reset_b = reset ? reset + b * length : NULL;
        load_lanes(&l, u, dt, A, h0, b, d0, lanes, d_inner, length, d_state);
        for (int64_t t = 0; t < length; ++t)
            lanes_step(l.h, &l, B_b + t * row_B, C_b + t * row_C, (reset_b && reset_b[t]) ? 0.0f : 1.0f, t,
                       d_state, y_l + t * LANES);
        for (int64_t w = 0; w < lanes; ++w) {
            const int64_t row = b * d_inner + d0 + w;
            for (int64_t t = 0; t < length; ++t) y[row * length + t] = y_l[t * LANES + w];
            if (last)
                for (int64_t n = 0; n < d_state; ++n) last[row * d_state + n] = l.h[n * LANES + w];
        }
    }
    free(y_l);
    free_lanes(&l);
}

/* Backward, 16 channels at a time as the forward: a block's states are recomputed into (L + 1) x d_state x 16
   floats of scratch and each step's decays into L x d_state x 16 more (so the reverse walk takes no second
   exp2 per element, ~12% of the backward at the cpu preset's size), then walked in reverse with every
   per-channel sum (du, ddt, dA) kept per lane. dB and dC
   sum over the channels: per lane into (L, d_state, 16) buffers shared by a batch row's blocks, whose lanes
   are added up once when the row is done, so the step loop has no horizontal sum at all. (A per-channel
   backward sums over d_state twice per step, which dominated at small d_state: 1.5 ms against 0.8 ms here
   at d_state 16; at d_state 64 this form is ~10% slower, on the traffic of its larger buffers.) dA sums L
   terms per lane: in float over blocks of GA_BLOCK steps, then in float64, which keeps it at 1e-7 without a
   float64 convert and add per element (those had made the backward ~1.6x slower). */
#define GA_BLOCK 32
void resel_scan_backward(const float *u, const float *dt, const float *A, const float *B, const float *C,
                         const uint8_t *reset, const float *h0, const float *dy, const float *dlast,
                         float *du, float *ddt, float *dA, float *dB, float *dC, float *dh0, int64_t batch,
                         int64_t d_inner, int64_t length, int64_t d_state, int64_t row_B, int64_t row_C,
                         int64_t block_begin, int64_t block_end) {
    (void)batch;
    const int64_t per_row = (d_inner + LANES - 1) / LANES, plane = d_state * LANES;
    Lanes l = alloc_lanes(length, d_state);
    float *states = malloc(sizeof(float) * (length + 1) * plane); /* plane 0: h_{-1}; plane t + 1: h_t */
    float *decays = malloc(sizeof(float) * length * plane);       /* plane t: exp(dt_t A), 0 at a reset */
    float *dy_l = malloc(sizeof(float) * length * LANES), *a_l = malloc(sizeof(float) * plane);
    float *g = malloc(sizeof(float) * plane), *g_A_block = malloc(sizeof(float) * plane);
    float *du_l = malloc(sizeof(float) * length * LANES), *ddt_l = malloc(sizeof(float) * length * LANES);
    float *dB_acc = calloc(length * plane, sizeof(float)), *dC_acc = calloc(length * plane, sizeof(float));
    double *g_A = malloc(sizeof(double) * plane);
    for (int64_t blk = block_begin; blk < block_end; ++blk) {
        const int64_t b = blk / per_row, d0 = (blk % per_row) * LANES;
        const int64_t lanes = d_inner - d0 < LANES ? d_inner - d0 : LANES;
        const float *B_b = B + b * length * row_B, *C_b = C + b * length * row_C;
        const uint8_t *reset_b = reset ? reset + b * length : NULL;
        load_lanes(&l, u, dt, A, h0, b, d0, lanes, d_inner, length, d_state);
        memcpy(states, l.h, sizeof(float) * plane);
        memset(dy_l, 0, sizeof(float) * length * LANES);
        memset(a_l, 0, sizeof(float) * plane);
        memset(g, 0, sizeof(float) * plane);
        for (int64_t w = 0; w < lanes; ++w) {
            const int64_t row = b * d_inner + d0 + w;
            for (int64_t t = 0; t < length; ++t) dy_l[t * LANES + w] = dy[row * length + t];
            for (int64_t n = 0; n < d_state; ++n) {
                a_l[n * LANES + w] = A[(d0 + w) * d_state + n];
                if (dlast) g[n * LANES + w] = dlast[row * d_state + n];
            }
        }
        for (int64_t t = 0; t < length; ++t) { /* recompute the states, keeping each step's decays */
            const float keep = (reset_b && reset_b[t]) ? 0.0f : 1.0f;
            const float *dt_t = l.dt + t * LANES, *u_t = l.u + t * LANES, *B_t = B_b + t * row_B;
            const float *prev = states + t * plane;
            float *next = states + (t + 1) * plane, *decay_t = decays + t * plane;
            float x[LANES];
            for (int w = 0; w < LANES; ++w) x[w] = dt_t[w] * u_t[w];
            for (int64_t n = 0; n < d_state; ++n) {
                const float Bn = B_t[n];
                const int64_t o = n * LANES;
#pragma omp simd
                for (int w = 0; w < LANES; ++w) {
                    const float decay = keep * exp2_clamped(dt_t[w] * l.a2[o + w]);
                    decay_t[o + w] = decay;
                    next[o + w] = decay * prev[o + w] + x[w] * Bn;
                }
            }
        }
        memset(g_A, 0, sizeof(double) * plane);
        memset(g_A_block, 0, sizeof(float) * plane);
        for (int64_t t = length - 1; t >= 0; --t) { /* g: grad w.r.t. h_t, then h_{t-1} */
            const float *dt_t = l.dt + t * LANES, *u_t = l.u + t * LANES, *gy = dy_l + t * LANES;
            const float *B_t = B_b + t * row_B, *C_t = C_b + t * row_C;
            const float *prev = states + t * plane, *decay_t = decays + t * plane;
            float *dB_t = dB_acc + t * plane, *dC_t = dC_acc + t * plane;
            float x[LANES], g_x[LANES], g_delta[LANES];
            for (int w = 0; w < LANES; ++w) {
                x[w] = dt_t[w] * u_t[w];
                g_x[w] = 0.0f;
                g_delta[w] = 0.0f;
            }
            for (int64_t n = 0; n < d_state; ++n) {
                const float Bn = B_t[n], Cn = C_t[n];
                const int64_t o = n * LANES;
#pragma omp simd
                for (int w = 0; w < LANES; ++w) {
                    const float gn = g[o + w] + gy[w] * Cn;
                    const float decay = decay_t[o + w];
                    const float carried = prev[o + w] * decay, h = carried + x[w] * Bn; /* h_t again */
                    const float g_log_decay = gn * carried; /* grad w.r.t. dt_t * A[n] */
                    dC_t[o + w] += gy[w] * h;
                    dB_t[o + w] += gn * x[w];
                    g_x[w] += gn * Bn;
                    g_delta[w] += g_log_decay * a_l[o + w];
                    g_A_block[o + w] += g_log_decay * dt_t[w];
                    g[o + w] = gn * decay;
                }
            }
            for (int w = 0; w < LANES; ++w) {
                du_l[t * LANES + w] = g_x[w] * dt_t[w];
                ddt_l[t * LANES + w] = g_x[w] * u_t[w] + g_delta[w];
            }
            if (t % GA_BLOCK == 0) {
                for (int64_t i = 0; i < plane; ++i) {
                    g_A[i] += g_A_block[i];
                    g_A_block[i] = 0.0f;
                }
            }
        }
        for (int64_t w = 0; w < lanes; ++w) {
            const int64_t row = b * d_inner + d0 + w;
            for (int64_t t = 0; t < length; ++t) {
                du[row * length + t] = du_l[t * LANES + w];
                ddt[row * length + t] = ddt_l[t * LANES + w];
            }
            for (int64_t n = 0; n < d_state; ++n) {
                dA[(d0 + w) * d_state + n] += (float)g_A[n * LANES + w];
                if (dh0) dh0[row * d_state + n] = g[n * LANES + w];
            }
        }
        if (d0 + LANES >= d_inner || blk + 1 == block_end) { /* the row's (or this range's) last block */
            float *dB_b = dB + b * length * d_state, *dC_b = dC + b * length * d_state;
            for (int64_t i = 0; i < length * d_state; ++i) {
                float sb = 0.0f, sc = 0.0f;
#pragma omp simd reduction(+ : sb, sc)
                for (int w = 0; w < LANES; ++w) {
                    sb += dB_acc[i * LANES + w];
                    sc += dC_acc[i * LANES + w];
                }
                dB_b[i] += sb;
                dC_b[i] += sc;
            }
            memset(dB_acc, 0, sizeof(float) * length * plane);
            memset(dC_acc, 0, sizeof(float) * length * plane);
        }
    }
    free(g_A);
    free(dC_acc);
    free(dB_acc);
    free(ddt_l);
    free(du_l);
    free(g_A_block);
    free(g);
    free(a_l);
    free(dy_l);
    free(decays);
    free(states);
    free_lanes(&l);
}

/* Causal depthwise conv, y_t = bias + sum_j w_j x_{t-(k-1)+j} over the taps at or after the latest reset
   at or before t (before any reset, the k-1 earlier inputs in hist count as times -(k-1)..-1).
   x, y, dx, dy: (batch, dim, L); w, dw: (dim, k); bias, dbias: (dim); hist, dhist: (batch, dim, k-1);
   final, dfinal: (batch, dim, k-1), the window carried to the next call (zero before the latest reset).
   Each row runs the unmasked conv over p = [hist, x] (vectorised), then takes the taps that reach past a
   reset back out: only the k-1 steps after each reset have any, listed once per batch row (a scalar walk
   over every step of every channel had cost ~3x the conv itself). The backward accumulates dw and dbias over
   the batch, so row ranges on different threads need their own. */

/* The latest reset at or before each step (-k: none), into start[0..L), and the steps with a tap that reaches
   before their reset (the k-1 after each reset at most), into masked[0..n); returns n. */
static int64_t latest_resets(const uint8_t *reset_b, int64_t length, int64_t k, int64_t *start, int64_t *masked) {
    int64_t s = -k, n = 0;
    for (int64_t t = 0; t < length; ++t) {
        if (reset_b && reset_b[t]) s = t;
        start[t] = s;
        if (t - (k - 1) < s) masked[n++] = t;
    }
    return n;
}

static void padded_row(const float *x_r, const float *hist_r, int64_t length, int64_t k, float *p) {
    if (hist_r) memcpy(p, hist_r, sizeof(float) * (k - 1));
    else memset(p, 0, sizeof(float) * (k - 1));
    memcpy(p + k - 1, x_r, sizeof(float) * length);
}

void resel_conv_forward(const float *x, const float *w, const float *bias, const uint8_t *reset, const float *hist,
                        float *y, float *final, int64_t dim, int64_t length, int64_t k,
                        int64_t row_begin, int64_t row_end) {
    float *p = malloc(sizeof(float) * (length + k - 1));
    int64_t *start = malloc(sizeof(int64_t) * length), *masked = malloc(sizeof(int64_t) * length);
    int64_t n_masked = 0, start_of = -1; /* start[] and masked[] hold batch row start_of's */
    for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t b = row / dim, d = row % dim;
        const float *w_d = w + d * k;
        float *y_r = y + row * length;
        padded_row(x + row * length, hist ? hist + row * (k - 1) : NULL, length, k, p); /* p[t + j]: tap j of t */
        if (b != start_of) { /* the resets are per batch row: found once for all its channels */
            n_masked = latest_resets(reset ? reset + b * length : NULL, length, k, start, masked);
            start_of = b;
        }
        const float b_d = bias ? bias[d] : 0.0f;
        for (int64_t t = 0; t < length; ++t) y_r[t] = b_d;
        for (int64_t j = 0; j < k; ++j) {
            const float wj = w_d[j], *p_j = p + j;
#pragma omp simd
            for (int64_t t = 0; t < length; ++t) y_r[t] += wj * p_j[t];
        }
        for (int64_t i = 0; i < n_masked; ++i) {
            const int64_t t = masked[i];
            for (int64_t j = 0; t - (k - 1) + j < start[t]; ++j) y_r[t] -= w_d[j] * p[t + j];
        }
        const int64_t last = length > 0 ? start[length - 1] : -k;
        for (int64_t i = 0; i < k - 1; ++i) {
            const int64_t tt = length - (k - 1) + i;
            final[row * (k - 1) + i] = tt >= last ? p[tt + k - 1] : 0.0f;
        }
    }
    free(masked);
    free(start);
    free(p);
}

void resel_conv_backward(const float *x, const float *w, const uint8_t *reset, const float *hist, const float *dy,
                         const float *dfinal, float *dx, float *dw, float *dbias, float *dhist,
                         int64_t dim, int64_t length, int64_t k, int64_t row_begin, int64_t row_end) {
    float *p = malloc(sizeof(float) * (length + k - 1)), *dp = malloc(sizeof(float) * (length + k - 1));
    int64_t *start = malloc(sizeof(int64_t) * length), *masked = malloc(sizeof(int64_t) * length);
    int64_t n_masked = 0, start_of = -1; /* as in the forward */
    for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t b = row / dim, d = row % dim;
        const float *w_d = w + d * k, *dy_r = dy + row * length;
        float *dw_d = dw + d * k;
        padded_row(x + row * length, hist ? hist + row * (k - 1) : NULL, length, k, p);
        if (b != start_of) {
            n_masked = latest_resets(reset ? reset + b * length : NULL, length, k, start, masked);
            start_of = b;
        }
        memset(dp, 0, sizeof(float) * (length + k - 1));
        float g_bias = 0.0f;
#pragma omp simd reduction(+ : g_bias)
        for (int64_t t = 0; t < length; ++t) g_bias += dy_r[t];
        for (int64_t j = 0; j < k; ++j) {
            const float wj = w_d[j], *p_j = p + j;
            float *dp_j = dp + j, acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t t = 0; t < length; ++t) {
                dp_j[t] += wj * dy_r[t];
                acc += dy_r[t] * p_j[t];
            }
            dw_d[j] += acc;
        }
        for (int64_t i = 0; i < n_masked; ++i) {
            const int64_t t = masked[i];
            for (int64_t j = 0; t - (k - 1) + j < start[t]; ++j) {
                dp[t + j] -= w_d[j] * dy_r[t];
                dw_d[j] -= dy_r[t] * p[t + j];
            }
        }
        if (dfinal) {
            const int64_t last = length > 0 ? start[length - 1] : -k;
            for (int64_t i = 0; i < k - 1; ++i)
                if (length - (k - 1) + i >= last) dp[length + i] += dfinal[row * (k - 1) + i];
        }
        if (dbias) dbias[d] += g_bias;
        memcpy(dx + row * length, dp + k - 1, sizeof(float) * length);
        if (dhist) memcpy(dhist + row * (k - 1), dp, sizeof(float) * (k - 1));
    }
    free(masked);
    free(start);
    free(dp);
    free(p);
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + exp2_clamped(-1.4426950408889634f * x)); }

/* GRU recurrence (PyTorch's gate order r, z, n), h_{t-1} = 0 at a reset:
     gh = W_hh h_{t-1} + b_hh;  r = sig(gi_r + gh_r);  z = sig(gi_z + gh_z);  n = tanh(gi_n + r gh_n)
     h_t = (1 - z) n + z h_{t-1}
   gi = W_ih x_t + b_ih is computed outside (one matmul over the whole sequence). Layouts: gi, dgi:
   (batch, L, 3H); w_t, dw_t: W_hh transposed, (H, 3H); b_hh, db_hh: (3H); h0, dh0: (batch, H);
   y, dy: (batch, L, H); gates: (batch, L, 4H) = (r, z, n, gh_n), saved for the backward.
   The backward accumulates dw_t and db_hh over its rows (one copy per thread). */
void resel_gru_forward(const float *gi, const float *w_t, const float *b_hh, const uint8_t *reset, const float *h0,
                       float *y, float *gates, int64_t length, int64_t H, int64_t row_begin, int64_t row_end) {
    float *gh = malloc(sizeof(float) * 3 * H);
    for (int64_t b = row_begin; b < row_end; ++b) {
        const float *h_prev = h0 ? h0 + b * H : NULL;
        for (int64_t t = 0; t < length; ++t) {
            if (reset && reset[b * length + t]) h_prev = NULL;
            memcpy(gh, b_hh, sizeof(float) * 3 * H);
            if (h_prev) {
                for (int64_t k = 0; k < H; ++k) {
                    const float hk = h_prev[k], *w_k = w_t + k * 3 * H;
#pragma omp simd
                    for (int64_t i = 0; i < 3 * H; ++i) gh[i] += hk * w_k[i];
                }
            }
            const float *gi_t = gi + (b * length + t) * 3 * H;
            float *y_t = y + (b * length + t) * H, *g_t = gates + (b * length + t) * 4 * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
                const float r = sigmoid(gi_t[j] + gh[j]);
                const float z = sigmoid(gi_t[H + j] + gh[H + j]);
                const float n = 2.0f * sigmoid(2.0f * (gi_t[2 * H + j] + r * gh[2 * H + j])) - 1.0f; /* tanh */
                const float hp = h_prev ? h_prev[j] : 0.0f;
                y_t[j] = (1.0f - z) * n + z * hp;
                g_t[j] = r;
                g_t[H + j] = z;
                g_t[2 * H + j] = n;
                g_t[3 * H + j] = gh[2 * H + j];
            }
            h_prev = y_t;
        }
    }
    free(gh);
}

void resel_gru_backward(const float *w_t, const uint8_t *reset, const float *h0, const float *y, const float *gates,
                        const float *dy, float *dgi, float *dw_t, float *db_hh, float *dh0,
                        int64_t length, int64_t H, int64_t row_begin, int64_t row_end) {
    float *dgh = malloc(sizeof(float) * 3 * H), *carry = malloc(sizeof(float) * H);
    for (int64_t b = row_begin; b < row_end; ++b) {
        memset(carry, 0, sizeof(float) * H);
        for (int64_t t = length - 1; t >= 0; --t) {
            const int at_reset = reset && reset[b * length + t];
            const float *h_prev = at_reset ? NULL : (t > 0 ? y + (b * length + t - 1) * H : (h0 ? h0 + b * H : NULL));
            const float *g_t = gates + (b * length + t) * 4 * H, *dy_t = dy + (b * length + t) * H;
            float *dgi_t = dgi + (b * length + t) * 3 * H;
#pragma omp simd
            for (int64_t j = 0; j < H; ++j) {
                const float g = dy_t[j] + carry[j];
                const float r = g_t[j], z = g_t[H + j], n = g_t[2 * H + j], ghn = g_t[3 * H + j];
                const float hp = h_prev ? h_prev[j] : 0.0f;
                const float dn_pre = g * (1.0f - z) * (1.0f - n * n);
                const float dr_pre = dn_pre * ghn * r * (1.0f - r);
                const float dz_pre = g * (hp - n) * z * (1.0f - z);
                dgi_t[j] = dr_pre;
                dgi_t[H + j] = dz_pre;
                dgi_t[2 * H + j] = dn_pre;
                dgh[j] = dr_pre;
                dgh[H + j] = dz_pre;
                dgh[2 * H + j] = dn_pre * r;
                carry[j] = g * z; /* through h_t = ... + z h_{t-1}; the W_hh path is added below */
            }
#pragma omp simd
            for (int64_t i = 0; i < 3 * H; ++i) db_hh[i] += dgh[i];
            if (!h_prev) { /* h_{t-1} is the zero reset state (or no initial state): nothing flows further */
                memset(carry, 0, sizeof(float) * H);
                continue;
            }
            for (int64_t k = 0; k < H; ++k) {
                const float hk = h_prev[k], *w_k = w_t + k * 3 * H;
                float *dw_k = dw_t + k * 3 * H;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int64_t i = 0; i < 3 * H; ++i) {
                    dw_k[i] += hk * dgh[i];
                    acc += w_k[i] * dgh[i];
                }
                carry[k] += acc;
            }
        }
        if (dh0) memcpy(dh0 + b * H, carry, sizeof(float) * H);
    }
    free(carry);
    free(dgh);
}

/* ELU (alpha 1) over n contiguous floats: y = x for x > 0, else exp(x) - 1, with exp(x) - 1 taken from its
   Taylor series for |x| < 1/32, where the subtraction would cancel (error < 1e-7 relative to y either way).
   The backward needs only the output: dy/dx = 1 for y > 0, else y + 1 (= exp(x)). */
static inline float elu_f(float v) {
    const float neg = v < 0.0f ? v : 0.0f; /* the exp branch is computed for every lane: keep it finite */
    const float series = neg * (1.0f + neg * (0.5f + neg * (1.0f / 6.0f + neg * (1.0f / 24.0f))));
    const float em1 = neg > -0.03125f ? series : exp2_clamped(1.4426950408889634f * neg) - 1.0f;
    return v > 0.0f ? v : (v == v ? em1 : v); /* NaN stays NaN */
}

/* the derivative from the output: 1 where y > 0, else y + 1 (= e^x) */
static inline float elu_grad_f(float y, float dy) { return y > 0.0f ? dy : dy * (y + 1.0f); }

void resel_elu_forward(const float *x, float *y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = elu_f(x[i]);
}

void resel_elu_backward(const float *y, const float *dy, float *dx, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dx[i] = elu_grad_f(y[i], dy[i]);
}

/* ELU with the first two axes swapped on the way: x (rows, members, width) -> y (members, rows, width), and
   back for the gradient. The critic ensemble's first layer is one matmul whose output holds the members side
   by side per row; its next layer multiplies member by member, so it needs them apart. Swapping here saves
   a transposing copy each way, which costs several times this ELU. */
void resel_elu_members_forward(const float *x, float *y, int64_t rows, int64_t members, int64_t width) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < members; ++k) {
            const float *src = x + (r * members + k) * width;
            float *dst = y + (k * rows + r) * width;
#pragma omp simd
            for (int64_t j = 0; j < width; ++j) dst[j] = elu_f(src[j]);
        }
}

void resel_elu_members_backward(const float *y, const float *dy, float *dx, int64_t rows, int64_t members,
                                int64_t width) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < members; ++k) {
            const int64_t from = (k * rows + r) * width;
            float *dst = dx + (r * members + k) * width;
#pragma omp simd
            for (int64_t j = 0; j < width; ++j) dst[j] = elu_grad_f(y[from + j], dy[from + j]);
        }
}

/* The selective scan's element-wise prologue and epilogue, one pass each instead of 2-5 tensor ops (forward
   and backward): dt = softplus(dt_raw + bias[d]) before the scan, out = (y + D[d] u) * silu(z) after it.
   Rows of length L as the scan's (batch * d_inner rows); bias, D and z are optional (NULL). Sums over the
   batch and time (the bias and D gradients) are kept per channel in float64. */

/* log(1 + e^x) with torch's threshold (x > 20 gives x): max(x, 0) + log1p(e^-|x|), the log1p as
   2 atanh(s) with s = t / (2 + t) <= 1/3, whose series to s^15 is exact to 2e-9 relative. */
static inline float softplus_f(float x) {
    const float ax = x < 0.0f ? -x : x;
    const float t = exp2_clamped(-1.4426950408889634f * ax);
    const float s = t / (2.0f + t), s2 = s * s;
    float p = 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    const float sp = (x > 0.0f ? x : 0.0f) + 2.0f * s * p;
    return x > 20.0f ? x : sp;
}

void resel_dt_forward(const float *raw, const float *bias, float *dt, int64_t rows, int64_t d_inner,
                      int64_t length, int64_t softplus) {
    for (int64_t r = 0; r < rows; ++r) {
        const float b = bias ? bias[r % d_inner] : 0.0f, *x = raw + r * length;
        float *y = dt + r * length;
        if (softplus) {
#pragma omp simd
            for (int64_t t = 0; t < length; ++t) y[t] = softplus_f(x[t] + b);
        } else {
#pragma omp simd
            for (int64_t t = 0; t < length; ++t) y[t] = x[t] + b;
        }
    }
}

/* g_raw = g_dt * softplus'(dt_raw + bias) (= sigmoid); g_bias (when not NULL) gets the sum over rows of a channel. */
void resel_dt_backward(const float *raw, const float *bias, const float *g_dt, float *g_raw, float *g_bias,
                       int64_t rows, int64_t d_inner, int64_t length, int64_t softplus) {
    double *acc = g_bias ? calloc(d_inner, sizeof(double)) : NULL;
    for (int64_t r = 0; r < rows; ++r) {
        const float b = bias ? bias[r % d_inner] : 0.0f, *x = raw + r * length, *g = g_dt + r * length;
        float *out = g_raw + r * length, sum = 0.0f;
        if (softplus) {
#pragma omp simd reduction(+ : sum)
            for (int64_t t = 0; t < length; ++t) {
                out[t] = g[t] * sigmoid(x[t] + b);
                sum += out[t];
            }
        } else {
#pragma omp simd reduction(+ : sum)
            for (int64_t t = 0; t < length; ++t) {
                out[t] = g[t];
                sum += g[t];
            }
        }
        if (acc) acc[r % d_inner] += sum;
    }
    if (acc) {
        for (int64_t d = 0; d < d_inner; ++d) g_bias[d] = (float)acc[d];
        free(acc);
    }
}

/* out = (y + D u) * silu(z); y_pre (when z is given and y_pre not NULL) keeps y + D u for the backward. */
void resel_gate_forward(const float *y, const float *u, const float *D, const float *z, float *out, float *y_pre,
                        int64_t rows, int64_t d_inner, int64_t length) {
    for (int64_t r = 0; r < rows; ++r) {
        const float dd = D ? D[r % d_inner] : 0.0f, *y_r = y + r * length, *u_r = u + r * length;
        float *o = out + r * length, *p = y_pre ? y_pre + r * length : NULL;
        if (z) {
            const float *z_r = z + r * length;
#pragma omp simd
            for (int64_t t = 0; t < length; ++t) {
                const float pre = y_r[t] + dd * u_r[t];
                if (p) p[t] = pre;
                o[t] = pre * z_r[t] * sigmoid(z_r[t]);
            }
        } else {
#pragma omp simd
            for (int64_t t = 0; t < length; ++t) o[t] = y_r[t] + dd * u_r[t];
        }
    }
}

/* From g_out: g_y (the gradient at the scan's output y), g_u = D g_y (the skip's share of du; when D is given),
   g_D (the sum over rows of a channel of g_y u) and g_z (when z is given). */
void resel_gate_backward(const float *y_pre, const float *u, const float *D, const float *z, const float *g_out,
                         float *g_y, float *g_u, float *g_D, float *g_z, int64_t rows, int64_t d_inner,
                         int64_t length) {
    double *acc = D ? calloc(d_inner, sizeof(double)) : NULL;
    for (int64_t r = 0; r < rows; ++r) {
        const float dd = D ? D[r % d_inner] : 0.0f, *u_r = u + r * length, *go = g_out + r * length;
        float *gy = g_y + r * length, sum = 0.0f;
        if (z) {
            const float *z_r = z + r * length, *p = y_pre + r * length;
            float *gz = g_z + r * length;
#pragma omp simd
            for (int64_t t = 0; t < length; ++t) {
                const float s = sigmoid(z_r[t]);
                gy[t] = go[t] * z_r[t] * s;
                gz[t] = go[t] * p[t] * s * (1.0f + z_r[t] * (1.0f - s));
            }
        } else {
            memcpy(gy, go, sizeof(float) * length);
        }
        if (D) {
            float *gu = g_u + r * length;
#pragma omp simd reduction(+ : sum)
            for (int64_t t = 0; t < length; ++t) {
                gu[t] = dd * gy[t];
                sum += gy[t] * u_r[t];
            }
            acc[r % d_inner] += sum;
        }
    }
    if (acc) {
        for (int64_t d = 0; d < d_inner; ++d) g_D[d] = (float)acc[d];
        free(acc);
    }
}

/* RMSNorm over rows of width n: y = x / sqrt(mean(x^2) + eps) * w, one pass per row where torch's CPU
   form runs ~7 ops forward and ~12 backward. rstd (rows) keeps 1 / sqrt(mean(x^2) + eps) for the
   backward, which gives dx = rstd (w dy) - x rstd^3 mean(w dy x) and sums dw over the rows in float64. */
void resel_rms_norm_forward(const float *x, const float *w, const float *eps, float *y, float *rstd, int64_t rows,
                            int64_t n) {
    for (int64_t r = 0; r < rows; ++r) {
        const float *x_r = x + r * n;
        float *y_r = y + r * n;
        float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
        for (int64_t i = 0; i < n; ++i) sq += x_r[i] * x_r[i];
        const float rs = 1.0f / __builtin_sqrtf(sq / (float)n + eps[0]);
        rstd[r] = rs;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) y_r[i] = x_r[i] * rs * w[i];
    }
}

void resel_rms_norm_backward(const float *x, const float *w, const float *rstd, const float *dy, float *dx, float *dw,
                             int64_t rows, int64_t n) {
    double *dw_sum = calloc(n, sizeof(double));
    for (int64_t r = 0; r < rows; ++r) {
        const float *x_r = x + r * n, *dy_r = dy + r * n;
        float *dx_r = dx + r * n;
        const float rs = rstd[r];
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < n; ++i) dot += w[i] * dy_r[i] * x_r[i];
        const float c = rs * rs * rs * dot / (float)n;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) dx_r[i] = rs * w[i] * dy_r[i] - x_r[i] * c;
        for (int64_t i = 0; i < n; ++i) dw_sum[i] += (double)(dy_r[i] * x_r[i] * rs);
    }
    for (int64_t i = 0; i < n; ++i) dw[i] = (float)dw_sum[i];
    free(dw_sum);
}
