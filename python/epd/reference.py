"""The data-plane semantics of epd in numpy: the oracle the tests and examples compare against
(the same contract as daemon/backends/cpu/reference_ops.h; both backends match it bit for bit).

Arrays hold the token dtype's storage: float32 (fp32), float16 (fp16) or uint16 bit patterns
(bf16). `cfg` is any object with world_size, experts, hidden, max_tokens_per_rank, top_k,
dtype (epd code) and expert_major (bool), e.g. an epd.Handle's info wrapped by Config.
"""

import numpy as np

from . import tensors


class Config:
    def __init__(self, world_size, experts, hidden, max_tokens_per_rank, top_k, dtype,
                 expert_major=True):
        self.world_size, self.experts, self.hidden = world_size, experts, hidden
        self.max_tokens_per_rank, self.top_k = max_tokens_per_rank, top_k
        self.dtype, self.expert_major = tensors.dtype_code(dtype), expert_major
        self.local_experts = experts // world_size

    @classmethod
    def of(cls, handle):
        i = handle.info
        return cls(i.world_size, i.experts, i.hidden, i.max_tokens_per_rank, i.top_k, i.dtype,
                   i.layout != 2)


def storage_dtype(dtype):
    return {tensors.BF16: np.uint16, tensors.FP16: np.float16, tensors.FP32: np.float32}[dtype]


def to_float(values, dtype):
    if dtype == tensors.BF16:
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def from_float(values, dtype):
    """Rounds float32 to the token dtype (round to nearest even)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == tensors.BF16:
        bits = values.view(np.uint32)
        rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
        return (rounded >> np.uint32(16)).astype(np.uint16)
    return values.astype(storage_dtype(dtype))


def rank_of_expert(cfg, e):
    return e // cfg.local_experts


def dispatch(cfg, xs, idxs, ws, d):
    """Rank d's receive tensors from every rank's x [n_s, H], topk_idx [n_s, K] and weights
    [n_s, K] (None: 1). Expert-major: dict of recv_x (only the packed rows), recv_src,
    recv_weights, recv_counts, recv_offsets. Rank-major: recv_x [R*T, H], recv_topk_idx,
    recv_topk_weights, recv_counts."""
    R, K, T, H, L = cfg.world_size, cfg.top_k, cfg.max_tokens_per_rank, cfg.hidden, \
        cfg.local_experts
    ws = [w if w is not None else np.ones(i.shape, np.float32) for w, i in zip(ws, idxs)]
    if cfg.expert_major:
        rows, src, weights, counts, offsets = [], [], [], [], []
        for l in range(L):
            e = d * L + l
            offsets.append(len(rows))
            for s in range(R):
                for t in range(idxs[s].shape[0]):
                    for k in range(K):
                        if idxs[s][t, k] == e:
                            rows.append(xs[s][t])
                            src.append((s, t, k))
                            weights.append(ws[s][t, k])
            counts.append(len(rows) - offsets[-1])
        return {"recv_x": np.array(rows, dtype=storage_dtype(cfg.dtype)).reshape(-1, H),
                "recv_src": np.array(src, dtype=np.int32).reshape(-1, 3),
                "recv_weights": np.array(weights, dtype=np.float32),
                "recv_counts": np.array(counts, dtype=np.int32),
                "recv_offsets": np.array(offsets, dtype=np.int32)}
    recv_x = np.zeros((R * T, H), dtype=storage_dtype(cfg.dtype))
    topk_idx = np.full((R * T, K), -1, dtype=np.int32)
    topk_weights = np.zeros((R * T, K), dtype=np.float32)
    for s in range(R):
        for t in range(idxs[s].shape[0]):
            row, present = s * T + t, False
            for k in range(K):
                e = int(idxs[s][t, k])
                if e >= 0 and rank_of_expert(cfg, e) == d:
                    topk_idx[row, k], topk_weights[row, k], present = e, ws[s][t, k], True
            if present:
                recv_x[row] = xs[s][t]
    return {"recv_x": recv_x, "recv_topk_idx": topk_idx, "recv_topk_weights": topk_weights,
            "recv_counts": np.array([idxs[s].shape[0] for s in range(R)], dtype=np.int32)}


def combine(cfg, s, idxs, ws, expert_out):
    """Rank s's out [n_s, H] from every rank d's expert output expert_out[d] [rows, H] laid out
    as dispatch left it (expert-major: packed rows; rank-major: rows s*T+t, pre-reduced)."""
    R, K, T, L = cfg.world_size, cfg.top_k, cfg.max_tokens_per_rank, cfg.local_experts
    n = idxs[s].shape[0]
    weights = ws[s] if ws[s] is not None else np.ones((n, K), np.float32)
    acc = np.zeros((n, cfg.hidden), dtype=np.float32)
    if cfg.expert_major:
        # Row of (s, t, k) on rank d: expert offset + selections of earlier ranks + earlier
        # selections of rank s.
        for t in range(n):
            for k in range(K):
                e = int(idxs[s][t, k])
                if e < 0:
                    continue
                d, l = rank_of_expert(cfg, e), e % L
                offset = sum(int((idxs[r] == d * L + j).sum()) for j in range(l) for r in range(R))
                before = sum(int((idxs[r] == e).sum()) for r in range(s))
                flat = idxs[s].reshape(-1)[: t * K + k]
                row = offset + before + int((flat == e).sum())
                z = to_float(expert_out[d][row], cfg.dtype)
                acc[t] = acc[t] + np.float32(weights[t, k]) * z
    else:
        for t in range(n):
            seen = set()
            for k in range(K):
                e = int(idxs[s][t, k])
                if e < 0 or rank_of_expert(cfg, e) in seen:
                    continue
                d = rank_of_expert(cfg, e)
                seen.add(d)
                acc[t] = acc[t] + np.float32(1.0) * to_float(expert_out[d][s * T + t], cfg.dtype)
    return from_float(acc, cfg.dtype)


# ---- fp8 dispatch: the quantization rule of common/fp8.h ----
E4M3_MAX = np.float32(448.0)
E4M3_NAN = 0x7F


def _e4m3_values():
    """float32 values of the positive e4m3 codes 0x00..0x7E (increasing with the code)."""
    codes = np.arange(0x7F)
    exponent, mantissa = codes >> 3, codes & 7
    return np.where(exponent == 0, mantissa / 8.0 * 2.0**-6,
                    (1 + mantissa / 8.0) * 2.0**(exponent - 7)).astype(np.float32)


def encode_e4m3(values):
    """e4m3 bytes of float32 values: round to nearest even (subnormals included), saturating
    to +-448 (infinities too); NaN -> 0x7F; the sign of zero kept."""
    values = np.asarray(values, dtype=np.float32)
    table = _e4m3_values()
    magnitude = np.minimum(np.abs(values), E4M3_MAX)
    above = np.clip(np.searchsorted(table, magnitude, side="left"), 0, len(table) - 1)
    below = np.maximum(above - 1, 0)
    up, down = table[above] - magnitude, magnitude - table[below]
    tie_to_even = (up == down) & (above % 2 == 0)
    code = np.where((up < down) | tie_to_even, above, below).astype(np.uint8)
    code = np.where(table[above] == magnitude, above, code).astype(np.uint8)
    code = code | np.where(np.signbit(values), np.uint8(0x80), np.uint8(0))
    return np.where(np.isnan(values), np.uint8(E4M3_NAN), code).astype(np.uint8)


def quantize_fp8(rows, scale_format="fp32"):
    """(q [n, H] uint8 e4m3, scales [n, H / 128]) of bf16 rows (uint16 bits): per 128-channel
    block, amax of the finite values, s = amax / 448; fp32 scales are s, ue8m0 scales the
    smallest power of two >= s (at least 2^-126) stored as its exponent byte; a block without
    a finite nonzero value has scale 1; q = e4m3(clamp(v / scale, -448, 448))."""
    values = to_float(np.asarray(rows, dtype=np.uint16), tensors.BF16)
    n, hidden = values.shape
    blocks = values.reshape(n, hidden // 128, 128)
    finite = np.where(np.isfinite(blocks), np.abs(blocks), np.float32(0))
    amax = finite.max(axis=2).astype(np.float32)
    s = (amax / E4M3_MAX).astype(np.float32)
    if scale_format == "ue8m0":
        exponent = np.ceil(np.log2(np.where(s > 0, s, np.float32(1)).astype(np.float64)))
        exponent = np.maximum(exponent, -126)
        scale = np.where(amax > 0, np.float32(2.0) ** exponent, 1.0).astype(np.float32)
        stored = (np.where(amax > 0, exponent, 0) + 127).astype(np.uint8)
    else:
        scale = np.where(amax > 0, s, np.float32(1)).astype(np.float32)
        stored = scale
    scaled = (blocks / scale[:, :, None]).astype(np.float32)
    q = encode_e4m3(np.clip(scaled, -E4M3_MAX, E4M3_MAX)).reshape(n, hidden)
    return q, stored
