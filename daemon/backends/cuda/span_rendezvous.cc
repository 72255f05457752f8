#include "daemon/backends/cuda/span_rendezvous.h"

#include <algorithm>
#include <thread>

#include "daemon/core/log.h"

namespace epd::cuda {
namespace {

constexpr std::chrono::milliseconds kPollInterval{5};

}  // namespace

SpanRendezvous::SpanRendezvous(const GroupConfig& config, ClusterStore& store)
    : config_(config), store_(store) {}

std::string SpanRendezvous::Prefix() const { return TransportKeyPrefix("nccl", config_.name); }

StatusOr<int64_t> SpanRendezvous::NextGeneration() {
  int64_t floor = floor_;
  if (first_formation_) {
    // Never the generation this node formed before: its unique id in the store is stale.
    EPD_ASSIGN_OR_RETURN(const int64_t fresh,
                         FirstFormationFloor(store_, Prefix(), config_.span.node));
    floor = std::max(floor, fresh);
    first_formation_ = false;
  }
  EPD_ASSIGN_OR_RETURN(int64_t generation, store_.Max(GenerationKey(), floor));
  floor_ = std::max(floor_, generation);
  return generation;
}

Status SpanRendezvous::Publish(int64_t generation, std::string_view unique_id) {
  return store_.Set(IdKey(generation), config_.ToString() + "\n" + ToHex(unique_id));
}

StatusOr<std::string> SpanRendezvous::Fetch(int64_t generation, Clock::time_point deadline,
                                            const std::function<bool()>& stopped) {
  const std::string key = IdKey(generation);
  const int root_node = config_.NodeOf(0);
  while (true) {
    if (stopped && stopped()) {
      return UnavailableError("group '{}': stopped while waiting for node {}'s NCCL unique id",
                              config_.name, root_node);
    }
    EPD_ASSIGN_OR_RETURN(std::optional<std::string> value, store_.Get(key));
    if (value.has_value()) {
      const size_t newline = value->rfind('\n');
      if (newline == std::string::npos) {
        return InternalError("group '{}': malformed unique id entry in the store", config_.name);
      }
      const std::string theirs = value->substr(0, newline), mine = config_.ToString();
      if (theirs != mine) {
        return FailedPreconditionError(
            "group '{}': the daemons created it with different configs: node {} (group rank 0) "
            "has {}, node {} has {}; create it with the same config on every node",
            config_.name, root_node, theirs, config_.span.node, mine);
      }
      return FromHex(std::string_view(*value).substr(newline + 1));
    }
    EPD_ASSIGN_OR_RETURN(std::optional<std::string> current, store_.Get(GenerationKey()));
    if (ParseGeneration(current) > generation) {
      return UnavailableError(
          "group '{}': generation {} of the communicator was given up by a member before node {} "
          "published its NCCL unique id; the group re-forms at its next op",
          config_.name, generation, root_node);
    }
    if (Clock::now() >= deadline) {
      return UnavailableError(
          "group '{}': node {} (group rank 0) did not publish the NCCL unique id of generation {} "
          "in time (down, or it has not created the group yet?)",
          config_.name, root_node, generation);
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

Status SpanRendezvous::MarkFormed(int64_t generation) {
  EPD_RETURN_IF_ERROR(
      store_.Set(FormedGenerationKey(Prefix(), generation, config_.span.node), "1"));
  last_formed_ = std::max(last_formed_, generation);
  return OkStatus();
}

void SpanRendezvous::Retire() { RetireGeneration(store_, Prefix(), last_formed_); }

void SpanRendezvous::Break(int64_t failed) {
  floor_ = std::max(floor_, failed + 1);
  // Raised at once, so members still waiting on the failed generation give up early.
  if (auto raised = store_.Max(GenerationKey(), floor_); !raised.ok()) {
    EPD_LOG(kNccl, warn, "group '{}': cannot raise the communicator generation: {}", config_.name,
            raised.status().ToString());
  }
}

std::string SpanRendezvous::ToHex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    hex.push_back(kDigits[c >> 4]);
    hex.push_back(kDigits[c & 15]);
  }
  return hex;
}

StatusOr<std::string> SpanRendezvous::FromHex(std::string_view hex) {
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  if (hex.size() % 2 != 0) {
    return InvalidArgumentError("hex text of odd length {}", hex.size());
  }
  std::string bytes(hex.size() / 2, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    const int high = digit(hex[2 * i]), low = digit(hex[2 * i + 1]);
    if (high < 0 || low < 0) {
      return InvalidArgumentError("'{}' at {} is not a lowercase hex digit pair",
                                  hex.substr(2 * i, 2), 2 * i);
    }
    bytes[i] = static_cast<char>(high << 4 | low);
  }
  return bytes;
}

}  // namespace epd::cuda
