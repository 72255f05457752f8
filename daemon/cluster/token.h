// The deployment token: a shared secret every daemon of one deployment reads from a file and
// sends with each Cluster call. It is never logged; comparisons take the same time whatever
// the contents, so a caller learns nothing from how fast a wrong token is refused.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace epd::cluster {

// The file's content without a trailing newline. INVALID_ARGUMENT naming the path (never the
// content) when it is missing, empty, or readable by other users.
StatusOr<std::string> ReadTokenFile(const std::string& path);

bool TokensEqual(std::string_view a, std::string_view b);

}  // namespace epd::cluster
