#!/usr/bin/env bash
# libepd_c.so exports the C API and nothing else: every epd_c.h function, no C++ or library
# symbol (those stay local, so a host process's own protobuf/gRPC/abseil never clash).
#   check_c_api_exports.sh LIBEPD_C HEADER
set -euo pipefail
lib=$1 header=$2
exported=$(nm -D --defined-only "$lib" | awk '{print $3}' | sort)
declared=$(grep -oE '\bepd_[a-z0-9_]+\(' "$header" | tr -d '(' | sort -u)
others=$(grep -v '^epd_' <<<"$exported" || true)
if [[ -n $others ]]; then
  echo "libepd_c exports symbols outside the C API:" >&2
  head -20 <<<"$others" >&2
  exit 1
fi
missing=$(comm -23 <(echo "$declared") <(echo "$exported"))
if [[ -n $missing ]]; then
  echo "epd_c.h declares functions libepd_c does not export: $missing" >&2
  exit 1
fi
echo "libepd_c exports exactly the $(wc -l <<<"$declared") functions of epd_c.h"
