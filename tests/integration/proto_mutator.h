// ProtoMutator: changes one field of a protobuf message, chosen at random at any depth, to a
// value a careless or hostile client could send (zero, -1, the type's extremes, one past the
// current value, an unknown enum number, an empty or oversized string, a cleared or extra
// repeated element, a sub-message cleared or newly set). Reflection only: it knows no epd
// message, so every field of every request is covered without a list to keep up to date.
// Deterministic for a given generator state.
#pragma once

#include <google/protobuf/message.h>

#include <random>
#include <string>

namespace epd::testing {

struct Mutation {
  // The field changed, as a path from the message ("x.shape[1]", "options.wait.value").
  std::string path;
  // The same path with what was done ("x.shape[1] = -1", "config.name cleared").
  std::string description;
  // The new value as a message would quote it ("-1", "with space"); empty when the change
  // set no single value (a field cleared, an element removed).
  std::string value;
};

// Changes one field of `message` (it may have no field set). Every call changes something:
// the result's description says what.
Mutation MutateOneField(google::protobuf::Message& message, std::mt19937_64& rng);

}  // namespace epd::testing
