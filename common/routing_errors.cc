#include "common/routing_errors.h"

namespace epd {

Status NonFiniteWeightError(int token, int k, float value) {
  return InvalidArgumentError("topk_weights[{}][{}] = {} is not a finite number", token, k, value);
}

}  // namespace epd
