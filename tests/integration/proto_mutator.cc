#include "tests/integration/proto_mutator.h"

#include <fmt/format.h>
#include <google/protobuf/descriptor.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace epd::testing {
namespace {

namespace pb = google::protobuf;
using Cpp = pb::FieldDescriptor::CppType;

// Deeper than any epd request nests (CreateGroupRequest.config.ranks is three levels).
constexpr int kMaxDepth = 4;

// A field that may be changed: `field` of `message`, reached by `path`.
struct Site {
  pb::Message* message;
  const pb::FieldDescriptor* field;
  std::string path;
};

void CollectSites(pb::Message& message, const std::string& prefix, int depth,
                  std::vector<Site>& sites) {
  const pb::Descriptor* descriptor = message.GetDescriptor();
  const pb::Reflection* reflection = message.GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const pb::FieldDescriptor* field = descriptor->field(i);
    const std::string path = prefix.empty() ? field->name() : prefix + "." + field->name();
    sites.push_back({&message, field, path});
    if (field->cpp_type() != Cpp::CPPTYPE_MESSAGE || depth + 1 >= kMaxDepth) continue;
    if (field->is_repeated()) {
      for (int j = 0; j < reflection->FieldSize(message, field); ++j) {
        CollectSites(*reflection->MutableRepeatedMessage(&message, field, j),
                     fmt::format("{}[{}]", path, j), depth + 1, sites);
      }
    } else if (reflection->HasField(message, field)) {
      CollectSites(*reflection->MutableMessage(&message, field), path, depth + 1, sites);
    }
  }
}

template <typename T>
const T& Pick(const std::vector<T>& values, std::mt19937_64& rng) {
  return values[std::uniform_int_distribution<size_t>(0, values.size() - 1)(rng)];
}

// Integers a client gets wrong: small and boundary values, the current one moved a little
// (wrapping, as the wire does: computed unsigned).
int64_t IntegerNear(int64_t current, std::mt19937_64& rng) {
  const auto moved = [current](uint64_t times, uint64_t plus) {
    return static_cast<int64_t>(static_cast<uint64_t>(current) * times + plus);
  };
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  const std::vector<int64_t> values = {0,
                                       1,
                                       -1,
                                       2,
                                       3,
                                       8,
                                       64,
                                       1000,
                                       int64_t{1} << 20,
                                       int64_t{1} << 31,
                                       (int64_t{1} << 31) - 1,
                                       std::numeric_limits<int32_t>::min(),
                                       kMax,
                                       kMin,
                                       moved(1, 1),
                                       moved(1, ~uint64_t{0}),
                                       moved(2, 0),
                                       moved(1, uint64_t{1} << 16),
                                       static_cast<int64_t>(rng())};
  return Pick(values, rng);
}

std::string StringNear(const std::string& current, std::mt19937_64& rng) {
  const std::vector<std::string> values = {"",
                                           "x",
                                           std::string(300, 'n'),
                                           std::string(100'000, 'l'),
                                           "../escape",
                                           "/dev/shm/epd-fuzz-none",
                                           "with space",
                                           "tab\there",
                                           "new\nline",
                                           "\xc3\xbc\x6e\xc3\xaf",  // "ünï"
                                           current + "x",
                                           current.substr(0, current.size() / 2)};
  return Pick(values, rng);
}

// Bytes (tokens, CUDA IPC handles): of the wrong length, or of the right one and corrupted,
// which only the consumer of the bytes can tell.
std::string BytesNear(const std::string& current, std::mt19937_64& rng) {
  std::string random(std::uniform_int_distribution<size_t>(1, 64)(rng), '\0');
  for (char& c : random) c = static_cast<char>(rng());
  std::string same_length_random = current, one_bit_flipped = current;
  for (char& c : same_length_random) c = static_cast<char>(rng());
  if (!current.empty()) {
    one_bit_flipped[rng() % current.size()] ^= static_cast<char>(1 << (rng() % 8));
  }
  const std::vector<std::string> values = {"",
                                           random,
                                           current + random,
                                           current.substr(0, current.size() / 2),
                                           same_length_random,
                                           one_bit_flipped,
                                           one_bit_flipped};
  return Pick(values, rng);
}

double RealNear(std::mt19937_64& rng) {
  const std::vector<double> values = {0.0,
                                      -1.0,
                                      1e300,
                                      std::numeric_limits<double>::quiet_NaN(),
                                      std::numeric_limits<double>::infinity(),
                                      -std::numeric_limits<double>::infinity(),
                                      1e-310};
  return Pick(values, rng);
}

// An enum number a client may send: a known one or one this daemon does not know.
int EnumNear(const pb::EnumDescriptor* type, std::mt19937_64& rng) {
  int highest = 0;
  for (int i = 0; i < type->value_count(); ++i)
    highest = std::max(highest, type->value(i)->number());
  return std::uniform_int_distribution<int>(-2, highest + 3)(rng);
}

std::string Shown(const std::string& value) {
  if (value.size() > 40) return fmt::format("<{} bytes>", value.size());
  return fmt::format("'{}'", value);
}

// Sets singular scalar `site` to a value other than its current one; returns it as a message
// would quote it.
std::string SetScalar(const Site& site, std::mt19937_64& rng) {
  pb::Message& m = *site.message;
  const pb::Reflection* r = m.GetReflection();
  const pb::FieldDescriptor* f = site.field;
  switch (f->cpp_type()) {
    case Cpp::CPPTYPE_INT32: {
      int32_t v = r->GetInt32(m, f);
      while (v == r->GetInt32(m, f)) v = static_cast<int32_t>(IntegerNear(v, rng));
      r->SetInt32(&m, f, v);
      return std::to_string(v);
    }
    case Cpp::CPPTYPE_INT64: {
      int64_t v = r->GetInt64(m, f);
      while (v == r->GetInt64(m, f)) v = IntegerNear(v, rng);
      r->SetInt64(&m, f, v);
      return std::to_string(v);
    }
    case Cpp::CPPTYPE_UINT32: {
      uint32_t v = r->GetUInt32(m, f);
      while (v == r->GetUInt32(m, f)) v = static_cast<uint32_t>(IntegerNear(v, rng));
      r->SetUInt32(&m, f, v);
      return std::to_string(v);
    }
    case Cpp::CPPTYPE_UINT64: {
      uint64_t v = r->GetUInt64(m, f);
      while (v == r->GetUInt64(m, f)) {
        v = static_cast<uint64_t>(IntegerNear(static_cast<int64_t>(v), rng));
      }
      r->SetUInt64(&m, f, v);
      return std::to_string(v);
    }
    case Cpp::CPPTYPE_DOUBLE: {
      const double v = RealNear(rng);
      r->SetDouble(&m, f, v);
      return fmt::format("{}", v);
    }
    case Cpp::CPPTYPE_FLOAT: {
      const float v = static_cast<float>(RealNear(rng));
      r->SetFloat(&m, f, v);
      return fmt::format("{}", v);
    }
    case Cpp::CPPTYPE_BOOL: {
      const bool v = !r->GetBool(m, f);
      r->SetBool(&m, f, v);
      return v ? "true" : "false";
    }
    case Cpp::CPPTYPE_ENUM: {
      int v = r->GetEnumValue(m, f);
      while (v == r->GetEnumValue(m, f)) v = EnumNear(f->enum_type(), rng);
      r->SetEnumValue(&m, f, v);
      return std::to_string(v);
    }
    case Cpp::CPPTYPE_STRING: {
      const std::string current = r->GetString(m, f);
      std::string v = current;
      while (v == current) {
        v = f->type() == pb::FieldDescriptor::TYPE_BYTES ? BytesNear(current, rng)
                                                         : StringNear(current, rng);
      }
      r->SetString(&m, f, v);
      return v;
    }
    case Cpp::CPPTYPE_MESSAGE:
      break;
  }
  return "?";
}

// Appends one element to repeated scalar `site`; returns it as text.
std::string AddScalar(const Site& site, std::mt19937_64& rng) {
  pb::Message& m = *site.message;
  const pb::Reflection* r = m.GetReflection();
  const pb::FieldDescriptor* f = site.field;
  const int64_t v = IntegerNear(0, rng);
  switch (f->cpp_type()) {
    case Cpp::CPPTYPE_INT32:
      r->AddInt32(&m, f, static_cast<int32_t>(v));
      return std::to_string(static_cast<int32_t>(v));
    case Cpp::CPPTYPE_INT64:
      r->AddInt64(&m, f, v);
      return std::to_string(v);
    case Cpp::CPPTYPE_UINT32:
      r->AddUInt32(&m, f, static_cast<uint32_t>(v));
      return std::to_string(static_cast<uint32_t>(v));
    case Cpp::CPPTYPE_UINT64:
      r->AddUInt64(&m, f, static_cast<uint64_t>(v));
      return std::to_string(static_cast<uint64_t>(v));
    case Cpp::CPPTYPE_DOUBLE:
      r->AddDouble(&m, f, RealNear(rng));
      return "a real";
    case Cpp::CPPTYPE_FLOAT:
      r->AddFloat(&m, f, static_cast<float>(RealNear(rng)));
      return "a real";
    case Cpp::CPPTYPE_BOOL:
      r->AddBool(&m, f, true);
      return "true";
    case Cpp::CPPTYPE_ENUM: {
      const int e = EnumNear(f->enum_type(), rng);
      r->AddEnumValue(&m, f, e);
      return std::to_string(e);
    }
    case Cpp::CPPTYPE_STRING: {
      const std::string s = StringNear("", rng);
      r->AddString(&m, f, s);
      return s;
    }
    case Cpp::CPPTYPE_MESSAGE:
      r->AddMessage(&m, f);
      return "an empty element";
  }
  return "?";
}

Mutation MutateRepeated(const Site& site, std::mt19937_64& rng) {
  pb::Message& m = *site.message;
  const pb::Reflection* r = m.GetReflection();
  const pb::FieldDescriptor* f = site.field;
  const int size = r->FieldSize(m, f);
  const int action = size == 0 ? 0 : std::uniform_int_distribution<int>(0, 3)(rng);
  switch (action) {
    case 1:
      r->ClearField(&m, f);
      return {site.path, site.path + " cleared"};
    case 2:
      r->RemoveLast(&m, f);
      return {site.path, site.path + " lost its last element"};
    case 3:
      if (f->cpp_type() == Cpp::CPPTYPE_MESSAGE) {
        const pb::Message& last = r->GetRepeatedMessage(m, f, size - 1);
        r->AddMessage(&m, f)->CopyFrom(last);
        return {site.path, site.path + " repeated its last element"};
      }
      for (int i = 0; i < 1000; ++i) AddScalar(site, rng);
      return {site.path, site.path + " grew by 1000 elements"};
    default: {
      const std::string value = AddScalar(site, rng);
      const bool text = f->cpp_type() == Cpp::CPPTYPE_STRING;
      return {site.path, fmt::format("{}[+] = {}", site.path, text ? Shown(value) : value), value};
    }
  }
}

}  // namespace

Mutation MutateOneField(pb::Message& message, std::mt19937_64& rng) {
  std::vector<Site> sites;
  CollectSites(message, "", 0, sites);
  if (sites.empty()) return {"", "nothing to change: the message has no fields"};
  const Site& site = Pick(sites, rng);
  pb::Message& m = *site.message;
  const pb::Reflection* r = m.GetReflection();
  const pb::FieldDescriptor* f = site.field;
  if (f->is_repeated()) return MutateRepeated(site, rng);
  if (f->cpp_type() == Cpp::CPPTYPE_MESSAGE) {
    if (r->HasField(m, f)) {
      r->ClearField(&m, f);
      return {site.path, site.path + " cleared"};
    }
    // Newly set: empty, or with one field changed inside.
    pb::Message* inner = r->MutableMessage(&m, f);
    if (std::uniform_int_distribution<int>(0, 1)(rng) == 0) {
      return {site.path, site.path + " set, empty"};
    }
    const Mutation nested = MutateOneField(*inner, rng);
    return {site.path + "." + nested.path, site.path + "." + nested.description, nested.value};
  }
  const bool clear =
      f->has_presence() && r->HasField(m, f) && std::uniform_int_distribution<int>(0, 3)(rng) == 0;
  if (clear) {
    r->ClearField(&m, f);
    return {site.path, site.path + " cleared"};
  }
  const std::string value = SetScalar(site, rng);
  const bool text = f->cpp_type() == Cpp::CPPTYPE_STRING;
  return {site.path, fmt::format("{} = {}", site.path, text ? Shown(value) : value), value};
}

}  // namespace epd::testing
