// ClusterView <-> epd.v1.ClusterView.
#pragma once

#include "daemon/core/cluster.h"
#include "epd/v1/cluster.pb.h"

namespace epd::cluster {

void ToProto(const ClusterView& view, v1::ClusterView* out);
// Members only; node_rank and leader are the caller's.
ClusterView FromProto(const v1::ClusterView& view);
v1::NodeState ToProto(NodeState state);

}  // namespace epd::cluster
