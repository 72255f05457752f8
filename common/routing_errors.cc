#include "common/routing_errors.h"

namespace epd {

Status NonFiniteWeightError(int token, int k, float value) {
  return InvalidArgumentError("topk_weights[{}][{}] = {} is not a finite number", token, k, value);
}

Status BadExpertIdError(int token, int k, int64_t value, int experts) {
  return InvalidArgumentError("topk_idx[{}, {}] = {} is outside [-1, {})", token, k, value,
                              experts);
}

}  // namespace epd
