/* epd C API: the client library (client/epd/client.h) behind plain C types, for any language
 * that can call C (the `epd` Python package loads it with ctypes). Shared library libepd_c.so.
 *
 * Conventions
 *  - Every call that can fail returns an epd_status_t: 0 (EPD_OK) or a gRPC canonical code.
 *    The daemon's code comes back unchanged. The message of the last failed call of the calling
 *    thread is epd_last_error_message(); it stays valid until the next failing call of the
 *    thread.
 *  - Objects are opaque pointers created by epd_*_create / _open / _connect and freed by the
 *    matching _destroy / _close (NULL is accepted and ignored there). A session outlives
 *    nothing it created: destroy fences, handles and stream ops before their session.
 *  - Structs passed in start with `struct_size` (sizeof as the caller compiled it), so fields
 *    can be appended later without breaking old callers; epd_*_init() fills the defaults.
 *  - Ops (update / dispatch / combine) are blocking (options.blocking: the call returns once
 *    the op completed) or fenced (the call returns once the op is posted; the daemon waits
 *    for options.wait and writes options.signal on completion). The answer of a fenced op is
 *    collected in the background: when it is an error, the session remembers it (the next op
 *    call, epd_session_poll and epd_session_sync return it, once) and writes the op's signal
 *    value itself, so a stream waiting for it never hangs on a failed op.
 *  - Thread safety: calls on one session may come from several threads (ops are posted in
 *    call order); a handle, fence or stream op must not be destroyed while in use.
 */
#ifndef EPD_C_API_H_
#define EPD_C_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* libepd_c is built with hidden visibility; what this header declares is its interface. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

#define EPD_C_API_VERSION 1

/* gRPC canonical codes (google.rpc.Code). */
typedef int32_t epd_status_t;
enum {
  EPD_OK = 0,
  EPD_CANCELLED = 1,
  EPD_UNKNOWN = 2,
  EPD_INVALID_ARGUMENT = 3,
  EPD_DEADLINE_EXCEEDED = 4,
  EPD_NOT_FOUND = 5,
  EPD_ALREADY_EXISTS = 6,
  EPD_PERMISSION_DENIED = 7,
  EPD_RESOURCE_EXHAUSTED = 8,
  EPD_FAILED_PRECONDITION = 9,
  EPD_ABORTED = 10,
  EPD_OUT_OF_RANGE = 11,
  EPD_UNIMPLEMENTED = 12,
  EPD_INTERNAL = 13,
  EPD_UNAVAILABLE = 14,
  EPD_DATA_LOSS = 15,
  EPD_UNAUTHENTICATED = 16
};

/* Same numbers as epd.v1.DType / ScaleFormat / Layout / Algorithm. FP8_E4M3 and UINT8 appear
 * only in fp8 dispatch payloads (e4m3 rows, ue8m0 scale bytes), never as a group's dtype. */
enum {
  EPD_DTYPE_UNSPECIFIED = 0,
  EPD_DTYPE_BF16 = 1,
  EPD_DTYPE_FP16 = 2,
  EPD_DTYPE_FP32 = 3,
  EPD_DTYPE_INT32 = 4,
  EPD_DTYPE_INT64 = 5,
  EPD_DTYPE_FP8_E4M3 = 6,
  EPD_DTYPE_UINT8 = 7
};
enum { EPD_SCALE_FORMAT_DEFAULT = 0, EPD_SCALE_FORMAT_FP32 = 1, EPD_SCALE_FORMAT_UE8M0 = 2 };
enum { EPD_LAYOUT_DEFAULT = 0, EPD_LAYOUT_EXPERT_MAJOR = 1, EPD_LAYOUT_RANK_MAJOR = 2 };
enum {
  EPD_ALGORITHM_DEFAULT = 0,
  EPD_ALGORITHM_LOW_LATENCY = 1,
  EPD_ALGORITHM_HIGH_THROUGHPUT = 2,
  EPD_ALGORITHM_AUTO = 3 /* high-throughput from 1024 max_tokens_per_rank, else low-latency */
};

/* Which side launches a handle's dispatch/combine kernels.
 * DAEMON_STREAMS: epd_update / epd_dispatch / epd_combine post ops to the daemon (RPCs,
 *   ordered by fences). Every backend, every group.
 * FRONTEND_LAUNCHED: the handle maps the group's data plane at open and epd_handle_update /
 *   epd_handle_dispatch / epd_handle_combine launch epd's kernels on the caller's CUDA stream
 *   (no RPC per op). Needs libepd_c built with CUDA, the cuda backend and a group (of either
 *   algorithm) that dispatches its token dtype (not FP8): FAILED_PRECONDITION otherwise.
 *   Every rank of the group must use this path.
 * DEFAULT: the environment's EPD_DATA_PATH ("daemon" / "frontend") when set, else frontend-
 *   launched for a CUDA client of the cuda backend whose GPU runs no MPS server (a context
 *   switch per daemon op costs more there), daemon streams otherwise (and for FP8 groups).
 *   epd_handle_info's data_path tells the choice. */
enum {
  EPD_DATA_PATH_DEFAULT = 0,
  EPD_DATA_PATH_DAEMON_STREAMS = 1,
  EPD_DATA_PATH_FRONTEND_LAUNCHED = 2
};

typedef struct epd_client epd_client_t;
typedef struct epd_session epd_session_t;
typedef struct epd_shm epd_shm_t;
typedef struct epd_fence epd_fence_t;
typedef struct epd_handle epd_handle_t;
typedef struct epd_stream_op epd_stream_op_t;

/* ---- errors and version ---- */
int32_t epd_c_api_version(void);
/* Message / code of the calling thread's last failed call ("" / 0 when none). */
const char* epd_last_error_message(void);
epd_status_t epd_last_error_code(void);
/* "INVALID_ARGUMENT", ... ("UNKNOWN" for codes out of range). */
const char* epd_status_name(epd_status_t code);

/* ---- client ---- */
typedef struct {
  uint32_t struct_size;
  int64_t connect_timeout_ms; /* channel READY */
  int64_t rpc_timeout_ms;     /* each unary RPC */
  int64_t op_timeout_ms;      /* waiting for an op's answer */
  int64_t close_timeout_ms;   /* closing a session */
} epd_client_options_t;
void epd_client_options_init(epd_client_options_t* options);

/* address: "unix:///path" or "host:port". options may be NULL (defaults). */
epd_status_t epd_client_connect(const char* address, const epd_client_options_t* options,
                                epd_client_t** client);
void epd_client_destroy(epd_client_t* client);

typedef struct {
  uint32_t struct_size;
  char daemon_version[64];
  char backend[16]; /* "cpu" or "cuda" */
  int32_t ranks;
  int32_t gpus;
  char nccl_version[32];
  int32_t groups;
  /* What EPD_DATA_PATH_DEFAULT picks for this client (ignoring EPD_DATA_PATH and FP8 groups):
   * FRONTEND_LAUNCHED when the backend is cuda, libepd_c has CUDA and no GPU runs MPS. */
  int32_t default_data_path;
} epd_node_info_t;
epd_status_t epd_client_node_info(epd_client_t* client, epd_node_info_t* info);

typedef struct {
  uint32_t struct_size;
  uint64_t sessions_open, sessions_total;
  uint64_t allocations, frees;
  int64_t live_bytes;
  uint64_t update_completed, update_failed;
  uint64_t dispatch_completed, dispatch_failed;
  uint64_t combine_completed, combine_failed;
} epd_stats_t;
epd_status_t epd_client_stats(epd_client_t* client, epd_stats_t* stats);

/* ---- sessions ---- */
epd_status_t epd_session_open(epd_client_t* client, int32_t rank, const char* client_name,
                              epd_session_t** session);
uint64_t epd_session_id(const epd_session_t* session);
int32_t epd_session_rank(const epd_session_t* session);
/* Ends the session (the daemon releases what it owns); later calls fail. Idempotent. */
epd_status_t epd_session_close(epd_session_t* session);
void epd_session_destroy(epd_session_t* session);
/* First error of a fenced op answered since the last report (EPD_OK when none); never waits. */
epd_status_t epd_session_poll(epd_session_t* session);
/* Waits up to timeout_ms for the answers of every op posted so far, then reports as _poll. */
epd_status_t epd_session_sync(epd_session_t* session, int64_t timeout_ms);

/* ---- memory ---- */
/* A POSIX shared memory object owned by this process (zero-filled, unlinked on destroy; the
 * daemon keeps its own mapping of registered ranges). For the cpu backend. */
epd_status_t epd_shm_create(size_t size_bytes, epd_shm_t** shm);
void* epd_shm_data(const epd_shm_t* shm);
size_t epd_shm_size(const epd_shm_t* shm);
const char* epd_shm_name(const epd_shm_t* shm);
void epd_shm_destroy(epd_shm_t* shm);

/* Registers bytes [offset, offset + size) of `shm` (size 0: the rest). */
epd_status_t epd_register_shm(epd_session_t* session, const epd_shm_t* shm, uint64_t offset,
                              uint64_t size, uint64_t* buffer_id);
/* The cudaMalloc allocation holding device pointer `ptr` (cuMemGetAddressRange). */
epd_status_t epd_device_allocation(const void* ptr, uint64_t* base, uint64_t* size_bytes,
                                   int32_t* device);
/* Registers device memory [ptr, ptr + size) through CUDA IPC of its allocation (tensor offsets
 * are then relative to ptr). UNIMPLEMENTED when libepd_c was built without CUDA. */
epd_status_t epd_register_device(epd_session_t* session, const void* ptr, uint64_t size_bytes,
                                 uint64_t* buffer_id);
epd_status_t epd_release_buffer(epd_session_t* session, uint64_t buffer_id);

/* ---- fences ---- */
epd_status_t epd_fence_create(epd_session_t* session, epd_fence_t** fence);
uint64_t epd_fence_id(const epd_fence_t* fence);
/* 1 when the counter is device memory (use the _on_stream calls), 0 for host memory. */
int32_t epd_fence_on_device(const epd_fence_t* fence);
/* Address of the counter in this process (device pointer when on device). */
void* epd_fence_counter(const epd_fence_t* fence);
epd_status_t epd_fence_signal(epd_fence_t* fence, uint64_t value);               /* host */
epd_status_t epd_fence_load(const epd_fence_t* fence, uint64_t* value);          /* host */
epd_status_t epd_fence_wait(const epd_fence_t* fence, uint64_t value, int64_t timeout_ms);
/* cuStreamWriteValue64 / cuStreamWaitValue64(GEQ) on `cuda_stream` (a cudaStream_t). */
epd_status_t epd_fence_signal_on_stream(epd_fence_t* fence, uint64_t value, void* cuda_stream);
epd_status_t epd_fence_wait_on_stream(epd_fence_t* fence, uint64_t value, void* cuda_stream);
/* DestroyFence on the daemon and unmaps the page; frees `fence` even when the RPC fails. */
epd_status_t epd_fence_destroy(epd_fence_t* fence);

/* ---- groups ---- */
typedef struct {
  uint32_t struct_size;
  const char* name;
  int32_t world_size;
  const int32_t* ranks; /* node ranks of group ranks 0..num_ranks-1; NULL: 0..world_size-1 */
  int32_t num_ranks;
  int32_t experts, hidden, max_tokens_per_rank, top_k;
  int32_t dtype, algorithm, layout;
  int32_t expert_capacity; /* 0: R * T */
  /* Appended after version 1 (read only when struct_size covers them). What dispatch moves:
   * 0 or dtype: token rows; EPD_DTYPE_FP8_E4M3 (bf16 groups, hidden a multiple of 128): e4m3
   * rows plus one scale per 128 channels in scale_format (EPD_SCALE_FORMAT_*). */
  int32_t dispatch_dtype;
  int32_t scale_format;
  /* Appended after version 2, high-throughput groups only (0 = the daemon's default):
   * receive rows per rank (default R * T; more rows fail the dispatch with
   * EPD_RESOURCE_EXHAUSTED) and the SMs its kernels may occupy (default 24). */
  int32_t recv_capacity;
  int32_t sm_budget;
  /* Appended after version 3: nonzero, the group spans the daemons of a multi-node deployment
   * ([cluster] in their config) and `ranks` are global ranks (node * ranks per node + local). */
  int32_t spans_nodes;
} epd_group_config_t;
void epd_group_config_init(epd_group_config_t* config);
/* filled_capacity (may be NULL) receives the expert capacity after defaults; for a
 * high-throughput group (also one EPD_ALGORITHM_AUTO chose) its receive rows per rank
 * (recv_capacity; R * T by default). Both algorithms run on either data path. */
epd_status_t epd_group_create(epd_session_t* session, const epd_group_config_t* config,
                              int32_t persistent, int32_t* filled_capacity);
epd_status_t epd_group_destroy(epd_session_t* session, const char* name);

/* ---- handles ---- */
#define EPD_NO_TENSOR UINT64_MAX
/* Set struct_size to sizeof(epd_handle_info_t) before epd_handle_info: it fills that many
 * bytes (0 counts as the version-1 struct, which ends at recv_offsets_offset). */
typedef struct {
  uint32_t struct_size;
  uint64_t handle_id;
  uint64_t buffer_id; /* the exported region as a buffer of the session */
  const char* name;   /* valid while the handle is */
  const char* group;
  int32_t group_rank;
  int32_t persistent;
  int32_t data_path;
  /* group */
  int32_t world_size, experts, local_experts, hidden, max_tokens_per_rank, top_k;
  int32_t dtype, algorithm, layout, expert_capacity;
  /* exported region, mapped into this process */
  void* region; /* device pointer when on_device */
  uint64_t region_bytes;
  int32_t on_device;
  int32_t device;
  /* layout: byte offsets into region, EPD_NO_TENSOR when the layout lacks the tensor.
   * Expert-major: recv_x [recv_rows, H], recv_src [recv_rows, 3] i32, recv_weights [recv_rows]
   * f32, recv_counts / recv_offsets [L] i32. Rank-major: recv_x [R*T, H], recv_topk_idx /
   * recv_topk_weights [R*T, K] i32 / f32, recv_counts [R] i32. */
  uint64_t recv_rows;
  uint64_t recv_x_offset, recv_src_offset, recv_weights_offset;
  uint64_t recv_topk_idx_offset, recv_topk_weights_offset;
  uint64_t recv_counts_offset, recv_offsets_offset;
  /* Appended after version 1. The group's dispatch payload (EPD_DTYPE_FP8_E4M3: recv_x holds
   * e4m3 bytes [recv_rows, H]; else dtype) and fp8 scale format (EPD_SCALE_FORMAT_FP32 or
   * _UE8M0; 0 without fp8). recv_scales [recv_rows, H / 128]: fp32, or uint8 ue8m0 exponent
   * bytes (scale = 2^(byte - 127)); EPD_NO_TENSOR without fp8 dispatch. */
  int32_t dispatch_dtype;
  int32_t scale_format;
  uint64_t recv_scales_offset;
  /* Appended after version 2. High-throughput groups (algorithm EPD_ALGORITHM_HIGH_THROUGHPUT):
   * rows packed by (source rank, token); recv_src [recv_rows, 2] i32 (src rank, src token),
   * recv_topk_idx / _weights [recv_rows, K] with LOCAL expert ids (-1 elsewhere), recv_counts [L]
   * rows per local expert, recv_offsets [L + 1] into expert_rows [expert_rows_entries] i32
   * (expert l's rows ascending), recv_rank_counts / recv_rank_offsets [R] i32 rows per source.
   * EPD_NO_TENSOR (entries 0) for other groups. */
  uint64_t recv_rank_counts_offset, recv_rank_offsets_offset;
  uint64_t expert_rows_offset, expert_rows_entries;
  /* Appended after version 3. Bytes the daemon holds for the handle: its receive region, the
   * routing it binds and, in a group spanning daemons on the cuda backend, its exchange
   * buffers. */
  uint64_t held_bytes;
} epd_handle_info_t;

epd_status_t epd_handle_create(epd_session_t* session, const char* group, const char* name,
                               int32_t persistent, int32_t data_path, epd_handle_t** handle);
epd_status_t epd_handle_attach(epd_session_t* session, const char* name, int32_t data_path,
                               epd_handle_t** handle);
epd_status_t epd_handle_info(const epd_handle_t* handle, epd_handle_info_t* info);
/* Unmaps the region; the daemon's handle stays (released with the session unless persistent). */
void epd_handle_close(epd_handle_t* handle);
/* DestroyHandle on the daemon, then as _close (frees `handle` even when the RPC fails). */
epd_status_t epd_handle_destroy(epd_handle_t* handle);

/* ---- ops ---- */
#define EPD_MAX_DIMS 4
typedef struct {
  uint64_t buffer_id;
  uint64_t offset_bytes; /* inside the registered range */
  int32_t dtype;
  int32_t ndim;
  int64_t shape[EPD_MAX_DIMS]; /* row-major, contiguous */
} epd_tensor_ref_t;

typedef struct {
  uint32_t struct_size;
  uint64_t wait_fence_id; /* 0: no wait */
  uint64_t wait_value;
  uint64_t signal_fence_id; /* 0: no signal */
  uint64_t signal_value;
  int32_t blocking;
} epd_op_options_t;
void epd_op_options_init(epd_op_options_t* options); /* blocking, no fences */

/* topk_idx [n, K] i32/i64; weights [n, K] f32 or NULL (all 1). */
epd_status_t epd_update(epd_session_t* session, const epd_handle_t* handle,
                        const epd_tensor_ref_t* topk_idx, const epd_tensor_ref_t* weights,
                        const epd_op_options_t* options);
/* x [n, H] group dtype; with fp8 dispatch, bf16 x that the daemon quantizes. */
epd_status_t epd_dispatch(epd_session_t* session, const epd_handle_t* handle,
                          const epd_tensor_ref_t* x, const epd_op_options_t* options);
/* Pre-quantized fp8 dispatch (groups with dispatch_dtype EPD_DTYPE_FP8_E4M3): x [n, H]
 * EPD_DTYPE_FP8_E4M3 and x_scales [n, H / 128] in the group's scale format (EPD_DTYPE_FP32,
 * or EPD_DTYPE_UINT8 ue8m0 exponent bytes); the daemon copies both unchanged. */
epd_status_t epd_dispatch_prequantized(epd_session_t* session, const epd_handle_t* handle,
                                       const epd_tensor_ref_t* x,
                                       const epd_tensor_ref_t* x_scales,
                                       const epd_op_options_t* options);
/* out [n, H]; expert_out [recv_rows, H] or NULL (recv_x in place). */
epd_status_t epd_combine(epd_session_t* session, const epd_handle_t* handle,
                         const epd_tensor_ref_t* out, const epd_tensor_ref_t* expert_out,
                         const epd_op_options_t* options);

/* ---- stream ops: one op as work on a CUDA stream, capturable in a CUDA graph ----
 * epd_stream_op_enqueue puts on `cuda_stream`:
 *   1. a host function that posts the op (wait fence_in >= 1, signal fence_out = 1),
 *   2. fence_in = 1            (inputs are ready: the daemon may start),
 *   3. wait fence_out >= 1     (outputs are complete),
 *   4. fence_out = 0, fence_in = 0   (re-arm: the daemon is done with both fences).
 * So the values are the same on every execution and a captured graph posts a fresh daemon op
 * on each replay. fence_in and fence_out must be device fences used by this stream op only.
 * The tensors are fixed at creation (a graph's tensors are static). */
enum { EPD_OP_UPDATE = 1, EPD_OP_DISPATCH = 2, EPD_OP_COMBINE = 3 };
/* UPDATE: a = topk_idx, b = weights or NULL; DISPATCH: a = x, b = x_scales (pre-quantized
 * fp8, as epd_dispatch_prequantized) or NULL;
 * COMBINE: a = out, b = expert_out or NULL. */
epd_status_t epd_stream_op_create(epd_session_t* session, const epd_handle_t* handle,
                                  int32_t kind, const epd_tensor_ref_t* a,
                                  const epd_tensor_ref_t* b, epd_fence_t* fence_in,
                                  epd_fence_t* fence_out, epd_stream_op_t** op);
epd_status_t epd_stream_op_enqueue(epd_stream_op_t* op, void* cuda_stream);
/* How many times the host function posted the op (tests: one per replay). */
uint64_t epd_stream_op_posts(const epd_stream_op_t* op);
void epd_stream_op_destroy(epd_stream_op_t* op);

/* ---- frontend-launched ops (handles whose data_path is EPD_DATA_PATH_FRONTEND_LAUNCHED) ----
 * Each call enqueues epd's kernel on `cuda_stream` (a cudaStream_t, on the handle's GPU) and
 * returns; nothing is posted to the daemon and no fence is involved (epd_op_options_t does
 * not apply: order work by the stream itself). Pointers are device pointers valid on the
 * stream. Every rank of the group launches the same ops in the same order. Device-side
 * errors (bad expert ids, capacity overflow, a peer that timed out) are recorded on the GPU:
 * epd_handle_take_errors reports them once the stream passed the ops. Capturable in a CUDA
 * graph (stream capture of the three calls); replays take fresh op sequence numbers on the
 * device, with the captured pointers and token count. Calling these on a daemon-streams handle, or
 * epd_update / _dispatch / _combine on a frontend-launched handle, is FAILED_PRECONDITION. */
/* topk_idx [n, K] int32 (idx_dtype EPD_DTYPE_INT32) or int64; weights [n, K] f32 or NULL. */
epd_status_t epd_handle_update(epd_handle_t* handle, const void* topk_idx, int32_t idx_dtype,
                               const float* weights, int32_t num_tokens, void* cuda_stream);
/* x [n, H] group dtype, n of the last update. */
epd_status_t epd_handle_dispatch(epd_handle_t* handle, const void* x, void* cuda_stream);
/* out [n, H]. The expert outputs are every rank's recv_x, in place: expert_out must be NULL or
 * the handle's own recv_x (INVALID_ARGUMENT otherwise). */
epd_status_t epd_handle_combine(epd_handle_t* handle, void* out, const void* expert_out,
                                void* cuda_stream);
/* The first device error of the frontend-launched ops since the last call (EPD_OK: none); call
 * once the stream passed them (e.g. after cudaStreamSynchronize). After a peer timeout it also
 * asks the daemon to restart the group's op numbering. EPD_OK for daemon-streams handles. */
epd_status_t epd_handle_take_errors(epd_handle_t* handle);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif /* EPD_C_API_H_ */
