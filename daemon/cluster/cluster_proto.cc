#include "daemon/cluster/cluster_proto.h"

namespace epd::cluster {

v1::NodeState ToProto(NodeState state) {
  switch (state) {
    case NodeState::kUp:
      return v1::NODE_STATE_UP;
    case NodeState::kDown:
      return v1::NODE_STATE_DOWN;
    default:
      return v1::NODE_STATE_ABSENT;
  }
}

void ToProto(const ClusterView& view, v1::ClusterView* out) {
  out->set_nodes(view.nodes);
  out->set_ranks_per_node(view.ranks_per_node);
  out->set_store_keys(view.store_keys);
  out->set_refused_calls(view.refused_calls);
  for (const ClusterMember& member : view.members) {
    v1::ClusterNode* node = out->add_members();
    node->set_node_rank(member.node_rank);
    node->set_address(member.address);
    node->set_state(ToProto(member.state));
    node->set_joins(member.joins);
    node->set_last_seen_ms_ago(member.last_seen_ms_ago);
    node->set_transport_failures(member.transport_failures);
    node->set_bytes_sent(member.bytes_sent);
    node->set_bytes_received(member.bytes_received);
  }
}

ClusterView FromProto(const v1::ClusterView& in) {
  ClusterView view;
  view.nodes = in.nodes();
  view.ranks_per_node = in.ranks_per_node();
  view.store_keys = in.store_keys();
  view.refused_calls = in.refused_calls();
  for (const v1::ClusterNode& node : in.members()) {
    ClusterMember member;
    member.node_rank = node.node_rank();
    member.address = node.address();
    member.state = node.state() == v1::NODE_STATE_UP     ? NodeState::kUp
                   : node.state() == v1::NODE_STATE_DOWN ? NodeState::kDown
                                                         : NodeState::kAbsent;
    member.joins = node.joins();
    member.last_seen_ms_ago = node.last_seen_ms_ago();
    member.transport_failures = node.transport_failures();
    member.bytes_sent = node.bytes_sent();
    member.bytes_received = node.bytes_received();
    view.members.push_back(std::move(member));
  }
  return view;
}

}  // namespace epd::cluster
