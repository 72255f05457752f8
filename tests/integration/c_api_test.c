/* The C API from C: a real daemon (cpu backend, 1 rank) driven through epd_c.h only.
 *   c_api_test /path/to/epd
 * Starts epd on a temporary socket, runs every group of calls, checks results and errors, and
 * exits 0 only when every check passed. */
#define _GNU_SOURCE
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/c_api/epd_c.h"

static int failures = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                            \
    }                                                                        \
  } while (0)

/* An epd call that must succeed; on failure prints the code and message and gives up. */
#define OK(call)                                                                          \
  do {                                                                                    \
    epd_status_t status_ = (call);                                                        \
    if (status_ != EPD_OK) {                                                              \
      fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call,                 \
              epd_status_name(status_), epd_last_error_message());                        \
      ++failures;                                                                         \
      goto done;                                                                          \
    }                                                                                     \
  } while (0)

/* An epd call that must fail with `code` and a message containing `text`. */
#define FAILS(call, code, text)                                                            \
  do {                                                                                     \
    epd_status_t status_ = (call);                                                         \
    if (status_ != (code) || strstr(epd_last_error_message(), (text)) == NULL ||           \
        epd_last_error_code() != (code)) {                                                 \
      fprintf(stderr, "%s:%d: %s -> %s '%s', expected %s containing '%s'\n", __FILE__,     \
              __LINE__, #call, epd_status_name(status_), epd_last_error_message(),         \
              epd_status_name(code), (text));                                              \
      ++failures;                                                                          \
    }                                                                                      \
  } while (0)

static pid_t start_daemon(const char* binary, const char* address) {
  pid_t pid = fork();
  if (pid == 0) {
    /* No /metrics: daemons of tests running in parallel would share its port. */
    execl(binary, binary, "--backend", "cpu", "--cpu-ranks", "1", "--listen", address,
          "--log-level", "warn", "--metrics-listen", "", (char*)NULL);
    _exit(127);
  }
  return pid;
}

static void stop_daemon(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  for (int i = 0; i < 1000; ++i) { /* bounded: 10 s */
    if (waitpid(pid, NULL, WNOHANG) == pid) return;
    usleep(10000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

static epd_tensor_ref_t ref2(uint64_t buffer_id, uint64_t offset, int32_t dtype, int64_t rows,
                             int64_t cols) {
  epd_tensor_ref_t ref;
  memset(&ref, 0, sizeof(ref));
  ref.buffer_id = buffer_id;
  ref.offset_bytes = offset;
  ref.dtype = dtype;
  ref.ndim = 2;
  ref.shape[0] = rows;
  ref.shape[1] = cols;
  return ref;
}

enum { E = 2, H = 8, T = 4, K = 2, N = 4 }; /* every tensor offset below is 16-byte aligned */
enum { FP8_H = 128 };                       /* fp8 dispatch: a multiple of 128 channels */

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s /path/to/epd\n", argv[0]);
    return 2;
  }
  char dir[] = "/tmp/epd-c-api-test-XXXXXX";
  if (mkdtemp(dir) == NULL) return 2;
  char socket_path[256], address[300];
  snprintf(socket_path, sizeof(socket_path), "%s/epd.sock", dir);
  snprintf(address, sizeof(address), "unix://%s", socket_path);

  epd_client_t* client = NULL;
  epd_session_t* session = NULL;
  epd_shm_t* shm = NULL;
  epd_fence_t *fence_in = NULL, *fence_out = NULL;
  epd_handle_t* handle = NULL;
  epd_handle_t* fp8_handle = NULL;
  epd_handle_t* ht8_handle = NULL;
  epd_shm_t* fp8_shm = NULL;
  pid_t daemon = -1;

  CHECK(epd_c_api_version() == EPD_C_API_VERSION);
  CHECK(strcmp(epd_status_name(EPD_NOT_FOUND), "NOT_FOUND") == 0);
  CHECK(strcmp(epd_status_name(99), "UNKNOWN") == 0);
  FAILS(epd_client_connect(NULL, NULL, &client), EPD_INVALID_ARGUMENT, "address");

  /* No daemon yet: connecting fails at once, naming the missing socket. */
  epd_client_options_t options;
  epd_client_options_init(&options);
  CHECK(options.struct_size == sizeof(options) && options.op_timeout_ms > 0);
  options.connect_timeout_ms = 200;
  epd_status_t refused = epd_client_connect(address, &options, &client);
  CHECK(refused == EPD_NOT_FOUND && strstr(epd_last_error_message(), "no such socket") != NULL);
  CHECK(client == NULL);
  options.struct_size = 4;
  FAILS(epd_client_connect(address, &options, &client), EPD_INVALID_ARGUMENT, "struct_size");

  daemon = start_daemon(argv[1], address);
  for (int i = 0; i < 1000; ++i) { /* bounded: 10 s for the socket */
    struct stat st;
    if (stat(socket_path, &st) == 0) break;
    usleep(10000);
  }
  OK(epd_client_connect(address, NULL, &client));

  epd_node_info_t info;
  OK(epd_client_node_info(client, &info));
  CHECK(strcmp(info.backend, "cpu") == 0);
  CHECK(info.ranks == 1);
  CHECK(info.default_data_path == EPD_DATA_PATH_DAEMON_STREAMS);

  FAILS(epd_session_open(client, 5, "c", &session), EPD_INVALID_ARGUMENT, "5");
  OK(epd_session_open(client, 0, "c-api-test", &session));
  CHECK(epd_session_rank(session) == 0);
  CHECK(epd_session_id(session) != 0);

  /* Group and handle. */
  epd_group_config_t group;
  epd_group_config_init(&group);
  group.name = "g";
  group.world_size = 1;
  group.experts = E;
  group.hidden = H;
  group.max_tokens_per_rank = T;
  group.top_k = K;
  group.dtype = EPD_DTYPE_FP32;
  group.hidden = 7;
  FAILS(epd_group_create(session, &group, 0, NULL), EPD_INVALID_ARGUMENT, "7");
  group.hidden = H;
  /* spans_nodes reaches the daemon, which is not part of a multi-node deployment. */
  group.spans_nodes = 1;
  FAILS(epd_group_create(session, &group, 0, NULL), EPD_FAILED_PRECONDITION,
        "spans_nodes needs a multi-node deployment");
  group.spans_nodes = 0;
  int32_t capacity = 0;
  OK(epd_group_create(session, &group, 0, &capacity));
  CHECK(capacity == T);
  /* AUTO picks high-throughput from 1024 tokens per rank; its capacity is the receive rows.
   * Its data path is chosen as a low-latency group's: forcing the frontend-launched path
   * fails here for the backend's sake (cpu), not the algorithm's. The refused handle stays
   * with the session, as any handle whose path was refused. */
  group.name = "prefill";
  group.max_tokens_per_rank = 1024;
  group.algorithm = EPD_ALGORITHM_AUTO;
  OK(epd_group_create(session, &group, 0, &capacity));
  CHECK(capacity == 1024);
  FAILS(epd_handle_create(session, "prefill", "", 0, EPD_DATA_PATH_FRONTEND_LAUNCHED, &handle),
        EPD_FAILED_PRECONDITION, "cuda backend");
  epd_handle_t* prefill = NULL;
  OK(epd_handle_create(session, "prefill", "", 0, EPD_DATA_PATH_DEFAULT, &prefill));
  epd_handle_info_t packed;
  packed.struct_size = sizeof(packed);
  OK(epd_handle_info(prefill, &packed));
  CHECK(packed.algorithm == EPD_ALGORITHM_HIGH_THROUGHPUT && packed.recv_rows == 1024);
  CHECK(packed.recv_src_offset != EPD_NO_TENSOR && packed.recv_weights_offset == EPD_NO_TENSOR);
  CHECK(packed.recv_topk_idx_offset != EPD_NO_TENSOR);
  CHECK(packed.recv_rank_counts_offset != EPD_NO_TENSOR &&
        packed.recv_rank_offsets_offset != EPD_NO_TENSOR);
  CHECK(packed.expert_rows_offset != EPD_NO_TENSOR && packed.expert_rows_entries == 1024 * K);
  CHECK(packed.held_bytes > packed.region_bytes); /* the region and the bound routing */
  OK(epd_handle_destroy(prefill));
  /* High-throughput bounds: the receive rows reach the daemon (and come back as the capacity);
   * an SM budget out of range is refused naming the field. */
  group.name = "prefill-small";
  group.recv_capacity = 300;
  group.sm_budget = 8;
  OK(epd_group_create(session, &group, 0, &capacity));
  CHECK(capacity == 300);
  group.name = "prefill-wide";
  group.recv_capacity = 0;
  group.sm_budget = 100000;
  FAILS(epd_group_create(session, &group, 0, NULL), EPD_INVALID_ARGUMENT, "sm_budget=100000");
  group.sm_budget = 0;
  group.name = "g";
  group.max_tokens_per_rank = T;
  group.algorithm = EPD_ALGORITHM_DEFAULT;
  /* The cpu backend has no frontend-launched path: forcing it names why, and the default (or
   * EPD_DATA_PATH) decides as the client library does. */
  FAILS(epd_handle_create(session, "g", "", 0, EPD_DATA_PATH_FRONTEND_LAUNCHED, &handle),
        EPD_FAILED_PRECONDITION, "cuda backend");
  CHECK(handle == NULL);
  setenv("EPD_DATA_PATH", "frontend", 1);
  FAILS(epd_handle_create(session, "g", "", 0, EPD_DATA_PATH_DEFAULT, &handle),
        EPD_FAILED_PRECONDITION, "frontend-launched");
  setenv("EPD_DATA_PATH", "sideways", 1);
  FAILS(epd_handle_create(session, "g", "", 0, EPD_DATA_PATH_DEFAULT, &handle),
        EPD_INVALID_ARGUMENT, "EPD_DATA_PATH");
  unsetenv("EPD_DATA_PATH");
  FAILS(epd_handle_create(session, "g", "", 0, 7, &handle), EPD_INVALID_ARGUMENT, "data_path 7");
  FAILS(epd_handle_create(session, "nope", "", 0, EPD_DATA_PATH_DEFAULT, &handle), EPD_NOT_FOUND,
        "nope");
  OK(epd_handle_create(session, "g", "h", 1, EPD_DATA_PATH_DEFAULT, &handle));
  epd_handle_info_t hi;
  /* A caller compiled against the first version gets only that prefix filled. */
  memset(&hi, 0xAB, sizeof(hi));
  hi.struct_size = (uint32_t)offsetof(epd_handle_info_t, dispatch_dtype);
  OK(epd_handle_info(handle, &hi));
  CHECK(hi.struct_size == offsetof(epd_handle_info_t, dispatch_dtype));
  CHECK(hi.recv_scales_offset == 0xABABABABABABABABull);
  memset(&hi, 0, sizeof(hi));
  hi.struct_size = sizeof(hi);
  OK(epd_handle_info(handle, &hi));
  CHECK(hi.struct_size == sizeof(hi));
  CHECK(hi.dispatch_dtype == EPD_DTYPE_FP32 && hi.scale_format == EPD_SCALE_FORMAT_DEFAULT);
  CHECK(hi.recv_scales_offset == EPD_NO_TENSOR);
  CHECK(hi.recv_rank_counts_offset == EPD_NO_TENSOR && hi.expert_rows_entries == 0);
  CHECK(strcmp(hi.name, "h") == 0 && strcmp(hi.group, "g") == 0);
  CHECK(hi.persistent == 1 && hi.on_device == 0 && hi.local_experts == E);
  CHECK(hi.recv_rows == (uint64_t)E * T);
  CHECK(hi.recv_topk_idx_offset == EPD_NO_TENSOR && hi.recv_src_offset != EPD_NO_TENSOR);
  CHECK(hi.region != NULL && hi.region_bytes > 0);
  CHECK(hi.data_path == EPD_DATA_PATH_DAEMON_STREAMS);
  /* Frontend-launched calls on a daemon-streams handle are refused, not posted. */
  FAILS(epd_handle_dispatch(handle, hi.region, NULL), EPD_FAILED_PRECONDITION,
        "daemon's streams");
  FAILS(epd_handle_update(handle, hi.region, EPD_DTYPE_INT32, NULL, 1, NULL),
        EPD_FAILED_PRECONDITION, "EPD_DATA_PATH_FRONTEND_LAUNCHED");
  FAILS(epd_handle_combine(handle, hi.region, NULL, NULL), EPD_FAILED_PRECONDITION,
        "daemon's streams");
  OK(epd_handle_take_errors(handle));

  /* Tensors in one shm object: x [N, H] f32 | idx [N, K] i32 | w [N, K] f32 | out [N, H]. */
  const size_t x_off = 0, idx_off = N * H * 4, w_off = idx_off + N * K * 4,
               out_off = w_off + N * K * 4, total = out_off + N * H * 4;
  OK(epd_shm_create(total, &shm));
  CHECK(epd_shm_size(shm) == total && epd_shm_name(shm)[0] == '/');
  char* base = (char*)epd_shm_data(shm);
  float* x = (float*)(base + x_off);
  int32_t* idx = (int32_t*)(base + idx_off);
  float* w = (float*)(base + w_off);
  float* out = (float*)(base + out_off);
  for (int i = 0; i < N * H; ++i) x[i] = (float)i * 0.5f;
  const int32_t routing[N * K] = {0, 1, 1, -1, 0, 0, -1, 1};
  const float weights[N * K] = {0.5f, 0.25f, 1.0f, 1.0f, 2.0f, 3.0f, 1.0f, 0.75f};
  memcpy(idx, routing, sizeof(routing));
  memcpy(w, weights, sizeof(weights));
  uint64_t buffer = 0;
  OK(epd_register_shm(session, shm, 0, 0, &buffer));

  epd_tensor_ref_t x_ref = ref2(buffer, x_off, EPD_DTYPE_FP32, N, H);
  epd_tensor_ref_t idx_ref = ref2(buffer, idx_off, EPD_DTYPE_INT32, N, K);
  epd_tensor_ref_t w_ref = ref2(buffer, w_off, EPD_DTYPE_FP32, N, K);
  epd_tensor_ref_t out_ref = ref2(buffer, out_off, EPD_DTYPE_FP32, N, H);

  /* Blocking ops (NULL options = blocking). */
  OK(epd_update(session, handle, &idx_ref, &w_ref, NULL));
  OK(epd_dispatch(session, handle, &x_ref, NULL));
  const int32_t* counts = (const int32_t*)((char*)hi.region + hi.recv_counts_offset);
  CHECK(counts[0] == 3 && counts[1] == 3);
  OK(epd_combine(session, handle, &out_ref, NULL, NULL));
  for (int t = 0; t < N; ++t) {
    for (int h = 0; h < H; ++h) {
      float acc = 0.0f;
      for (int k = 0; k < K; ++k) {
        if (routing[t * K + k] < 0) continue;
        const float product = weights[t * K + k] * x[t * H + h];
        acc = acc + product;
      }
      CHECK(out[t * H + h] == acc);
    }
  }

  /* Fenced ops with host fences. */
  OK(epd_fence_create(session, &fence_in));
  OK(epd_fence_create(session, &fence_out));
  CHECK(epd_fence_on_device(fence_in) == 0 && epd_fence_counter(fence_in) != NULL);
  CHECK(epd_fence_id(fence_in) != epd_fence_id(fence_out));
  memset(out, 0, N * H * 4);
  epd_op_options_t fenced;
  epd_op_options_init(&fenced);
  CHECK(fenced.blocking == 1);
  fenced.blocking = 0;
  fenced.wait_fence_id = epd_fence_id(fence_in);
  fenced.wait_value = 1;
  fenced.signal_fence_id = epd_fence_id(fence_out);
  fenced.signal_value = 1;
  OK(epd_combine(session, handle, &out_ref, NULL, &fenced));
  uint64_t value = 99;
  OK(epd_fence_load(fence_out, &value));
  CHECK(value == 0); /* the daemon waits for fence_in */
  OK(epd_fence_signal(fence_in, 1));
  OK(epd_fence_wait(fence_out, 1, 5000));
  OK(epd_session_sync(session, 5000));
  CHECK(out[H] == x[H]); /* token 1: one expert, weight 1 */
  FAILS(epd_fence_wait(fence_out, 2, 10), EPD_DEADLINE_EXCEEDED, "2");

  /* Stream ops need two distinct device fences. */
  epd_stream_op_t* op = NULL;
  FAILS(epd_stream_op_create(session, handle, EPD_OP_COMBINE, &out_ref, NULL, fence_in, fence_in,
                             &op),
        EPD_INVALID_ARGUMENT, "both");
  FAILS(epd_stream_op_create(session, handle, EPD_OP_COMBINE, &out_ref, NULL, fence_in, fence_out,
                             &op),
        EPD_FAILED_PRECONDITION, "device fences");
  CHECK(op == NULL && epd_stream_op_posts(op) == 0);

  /* A fenced op the daemon refuses: reported by sync (once), its signal written by the client. */
  epd_tensor_ref_t unknown = ref2(buffer + 1000, 0, EPD_DTYPE_INT32, N, K);
  fenced.wait_fence_id = 0;
  fenced.signal_value = 2;
  OK(epd_update(session, handle, &unknown, NULL, &fenced));
  OK(epd_fence_wait(fence_out, 2, 5000));
  FAILS(epd_session_sync(session, 5000), EPD_NOT_FOUND, "topk_idx.buffer_id");
  OK(epd_session_poll(session));

  /* A fenced op that fails on the stream (bad expert id): answered once enqueued, its signal
     written in stream order, and the error reported by the next op on the handle. */
  idx[1] = 9;
  fenced.signal_value = 3;
  OK(epd_update(session, handle, &idx_ref, NULL, &fenced));
  OK(epd_fence_wait(fence_out, 3, 5000));
  OK(epd_session_sync(session, 5000));
  FAILS(epd_dispatch(session, handle, &x_ref, NULL), EPD_FAILED_PRECONDITION, "9");

  /* Request errors name the field and value. */
  epd_tensor_ref_t bad = ref2(buffer + 1000, 0, EPD_DTYPE_INT32, N, K);
  FAILS(epd_update(session, handle, &bad, NULL, NULL), EPD_NOT_FOUND, "1");
  bad = idx_ref;
  bad.ndim = 0;
  FAILS(epd_update(session, handle, &bad, NULL, NULL), EPD_INVALID_ARGUMENT, "ndim");
  FAILS(epd_dispatch(session, handle, NULL, NULL), EPD_INVALID_ARGUMENT, "NULL");
  /* Host memory is no device allocation (and a build without CUDA has no device path). */
  CHECK(epd_register_device(session, x, 16, &buffer) != EPD_OK);
  CHECK(epd_last_error_message()[0] != '\0');

  /* Pre-quantized fp8 dispatch: e4m3 x and ue8m0 x_scales arrive unchanged, rows in the
     expert-major order of the same routing as above. */
  epd_group_config_t fp8_group = group;
  fp8_group.name = "g8";
  fp8_group.hidden = FP8_H;
  fp8_group.dtype = EPD_DTYPE_BF16;
  fp8_group.dispatch_dtype = EPD_DTYPE_FP8_E4M3;
  fp8_group.scale_format = EPD_SCALE_FORMAT_UE8M0;
  OK(epd_group_create(session, &fp8_group, 0, NULL));
  OK(epd_handle_create(session, "g8", "", 0, EPD_DATA_PATH_DEFAULT, &fp8_handle));
  epd_handle_info_t fp8_info;
  memset(&fp8_info, 0, sizeof(fp8_info));
  fp8_info.struct_size = sizeof(fp8_info);
  OK(epd_handle_info(fp8_handle, &fp8_info));
  CHECK(fp8_info.dispatch_dtype == EPD_DTYPE_FP8_E4M3 &&
        fp8_info.scale_format == EPD_SCALE_FORMAT_UE8M0);
  /* q [N, FP8_H] e4m3 | scales [N, 1] ue8m0 (16 bytes) | idx [N, K] i32 */
  const size_t q_off = 0, scales_off = N * FP8_H, idx8_off = scales_off + 16,
               fp8_total = idx8_off + N * K * 4;
  OK(epd_shm_create(fp8_total, &fp8_shm));
  uint8_t* q = (uint8_t*)epd_shm_data(fp8_shm);
  for (int i = 0; i < N * FP8_H; ++i) q[i] = (uint8_t)((i * 37 + 11) & 0x7E); /* no NaN code */
  for (int t = 0; t < N; ++t) q[scales_off + t] = (uint8_t)(120 + t);
  memcpy(q + idx8_off, routing, sizeof(routing));
  uint64_t fp8_buffer = 0;
  OK(epd_register_shm(session, fp8_shm, 0, 0, &fp8_buffer));
  epd_tensor_ref_t q_ref = ref2(fp8_buffer, q_off, EPD_DTYPE_FP8_E4M3, N, FP8_H);
  epd_tensor_ref_t scales_ref = ref2(fp8_buffer, scales_off, EPD_DTYPE_UINT8, N, 1);
  epd_tensor_ref_t idx8_ref = ref2(fp8_buffer, idx8_off, EPD_DTYPE_INT32, N, K);
  OK(epd_update(session, fp8_handle, &idx8_ref, NULL, NULL));
  FAILS(epd_dispatch_prequantized(session, fp8_handle, &q_ref, NULL, NULL), EPD_INVALID_ARGUMENT,
        "x_scales");
  epd_tensor_ref_t fp32_scales = scales_ref;
  fp32_scales.dtype = EPD_DTYPE_FP32;
  FAILS(epd_dispatch_prequantized(session, fp8_handle, &q_ref, &fp32_scales, NULL),
        EPD_INVALID_ARGUMENT, "x_scales.dtype");
  FAILS(epd_dispatch(session, fp8_handle, &q_ref, NULL), EPD_INVALID_ARGUMENT, "x_scales");
  OK(epd_dispatch_prequantized(session, fp8_handle, &q_ref, &scales_ref, NULL));
  {
    const int expected_tokens[6] = {0, 2, 2, /* expert 1: */ 0, 1, 3};
    const uint8_t* recv_q = (const uint8_t*)fp8_info.region + fp8_info.recv_x_offset;
    const uint8_t* recv_scales = (const uint8_t*)fp8_info.region + fp8_info.recv_scales_offset;
    for (int row = 0; row < 6; ++row) {
      const int t = expected_tokens[row];
      CHECK(memcmp(recv_q + row * FP8_H, q + t * FP8_H, FP8_H) == 0);
      CHECK(recv_scales[row] == q[scales_off + t]);
    }
  }
  /* The same pre-quantized tokens to a high-throughput group: one packed row per token with an
     expert here, in token order (every token has one), e4m3 bytes and scales unchanged. */
  epd_group_config_t ht_group = fp8_group;
  ht_group.name = "g8ht";
  ht_group.algorithm = EPD_ALGORITHM_HIGH_THROUGHPUT;
  OK(epd_group_create(session, &ht_group, 0, NULL));
  OK(epd_handle_create(session, "g8ht", "", 0, EPD_DATA_PATH_DEFAULT, &ht8_handle));
  epd_handle_info_t ht8_info;
  memset(&ht8_info, 0, sizeof(ht8_info));
  ht8_info.struct_size = sizeof(ht8_info);
  OK(epd_handle_info(ht8_handle, &ht8_info));
  CHECK(ht8_info.algorithm == EPD_ALGORITHM_HIGH_THROUGHPUT &&
        ht8_info.recv_scales_offset != EPD_NO_TENSOR);
  OK(epd_update(session, ht8_handle, &idx8_ref, NULL, NULL));
  OK(epd_dispatch_prequantized(session, ht8_handle, &q_ref, &scales_ref, NULL));
  {
    const uint8_t* recv_q = (const uint8_t*)ht8_info.region + ht8_info.recv_x_offset;
    const uint8_t* recv_scales = (const uint8_t*)ht8_info.region + ht8_info.recv_scales_offset;
    for (int t = 0; t < N; ++t) {
      CHECK(memcmp(recv_q + t * FP8_H, q + t * FP8_H, FP8_H) == 0);
      CHECK(recv_scales[t] == q[scales_off + t]);
    }
  }

  /* Release and destroy. */
  OK(epd_release_buffer(session, buffer));
  FAILS(epd_release_buffer(session, buffer), EPD_NOT_FOUND, "");
  OK(epd_fence_destroy(fence_in));
  fence_in = NULL;
  FAILS(epd_group_destroy(session, "g"), EPD_FAILED_PRECONDITION, "handles");
  OK(epd_session_close(session));
  OK(epd_session_close(session)); /* idempotent */
  FAILS(epd_fence_create(session, &fence_in), EPD_NOT_FOUND, "not an open session");
  FAILS(epd_dispatch(session, handle, &x_ref, NULL), EPD_FAILED_PRECONDITION, "closed");
  OK(epd_handle_destroy(handle)); /* the daemon released it with the session */
  handle = NULL;

  epd_stats_t stats;
  OK(epd_client_stats(client, &stats));
  CHECK(stats.update_completed >= 1 && stats.dispatch_failed >= 1);
  CHECK(stats.dispatch_completed == 3 && stats.combine_completed == 2);

done:
  epd_handle_close(ht8_handle);
  epd_handle_close(fp8_handle);
  epd_shm_destroy(fp8_shm);
  epd_fence_destroy(fence_in);
  epd_fence_destroy(fence_out);
  epd_handle_close(handle);
  epd_session_destroy(session);
  epd_shm_destroy(shm);
  epd_client_destroy(client);
  stop_daemon(daemon);
  unlink(socket_path);
  rmdir(dir);
  if (failures != 0) {
    fprintf(stderr, "c_api_test: %d check(s) failed\n", failures);
    return 1;
  }
  printf("c_api_test: all checks passed\n");
  return 0;
}
