// The thread-local last error of the C API.
#include <string>

#include "client/c_api/internal.h"

namespace {

thread_local std::string last_message;
thread_local epd_status_t last_code = EPD_OK;

}  // namespace

namespace epd::c_api {

epd_status_t Report(const Status& status) {
  if (status.ok()) return EPD_OK;
  last_code = static_cast<epd_status_t>(status.code());
  last_message = status.message();
  return last_code;
}

epd_status_t NullArgument(const char* function, const char* argument) {
  return Report(InvalidArgumentError("{}: argument '{}' is NULL", function, argument));
}

}  // namespace epd::c_api

extern "C" {

int32_t epd_c_api_version(void) { return EPD_C_API_VERSION; }
const char* epd_last_error_message(void) { return last_message.c_str(); }
epd_status_t epd_last_error_code(void) { return last_code; }

const char* epd_status_name(epd_status_t code) {
  if (code < EPD_OK || code > EPD_UNAUTHENTICATED) return "UNKNOWN";
  return epd::StatusCodeName(static_cast<epd::StatusCode>(code));
}

}  // extern "C"
