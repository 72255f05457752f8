// The [[group]] tables of the daemon's config file (with their [[group.handle]] tables) as
// persistent group declarations: every group's shape is validated here, what depends on the
// node (its ranks, the cluster) later (CheckGroupsAgainstNode).
#pragma once

#include "daemon/core/daemon_config.h"
#include "daemon/core/toml_reader.h"

namespace epd {

// `node`: the top-level "group" array; appends to config->groups. Group names, and handle
// names per rank, must be unique.
Status ParseGroups(const TomlReader& reader, const toml::node& node, DaemonConfig* config);

}  // namespace epd
