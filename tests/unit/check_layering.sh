#!/bin/sh
# The include rules of docs/design.md §1 that no compiler enforces (every library sees the
# whole source tree): the client and common/ include nothing of the daemon, only the client's
# launch library (epd_client_launch: client/frontend_ops.cc) includes the kernels, and
# epd_common's own files need neither gRPC nor CUDA. Prints every offending line; exit 1 when
# there is one.
root="${1:?usage: check_layering.sh SOURCE_DIR}"
cd "$root" || exit 2
status=0
report() {
  if [ -n "$2" ]; then
    echo "$1:"
    echo "$2"
    status=1
  fi
}
report "client/ includes the daemon" \
  "$(grep -rnE '#include "daemon/' client/)"
report "client/ includes the kernels outside its launch library (client/frontend_ops.cc)" \
  "$(grep -rnE '#include "kernels/' client/ | grep -v '^client/frontend_ops\.cc:')"
report "common/ includes the daemon, the client or the kernels" \
  "$(grep -rnE '#include "(daemon|client|kernels)/' common/)"
# epd_common proper: everything in common/ but the _grpc and _cuda parts.
plain=$(ls common/*.h common/*.cc | grep -vE 'common/(grpc_status|proto_dtype|cuda_check|cuda_copy|cuda_device|cuda_driver)\.')
report "epd_common includes gRPC, protobuf or CUDA" \
  "$(grep -nE '#include [<"](grpc|google/protobuf|cuda|epd/v1/)' $plain)"
exit $status
