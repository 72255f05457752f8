// Where epd-bench's in-process ranks run on the cuda backend (--gpus), and how many blocks a
// collective kernel may take when ranks share a GPU.
#pragma once

#include <algorithm>
#include <map>
#include <vector>

namespace epd::bench {

// `gpus[r]`: the GPU of rank r as --gpus named it; none named: rank r on GPU r.
inline std::vector<int> RankDevices(const std::vector<int>& gpus, int ranks) {
  if (!gpus.empty()) return gpus;
  std::vector<int> devices;
  for (int r = 0; r < ranks; ++r) devices.push_back(r);
  return devices;
}

// 0 when every rank has a GPU of its own (no bound); else an equal share of `sms` for each
// rank of the most shared GPU, a block per SM: a rank's collective kernel waits for its peers',
// so the kernels of ranks sharing a GPU must be resident together.
inline int SharedGpuBlockBound(const std::vector<int>& devices, int sms) {
  std::map<int, int> ranks_on;
  int sharing = 1;
  for (int device : devices) sharing = std::max(sharing, ++ranks_on[device]);
  return sharing == 1 ? 0 : std::max(1, sms / sharing);
}

}  // namespace epd::bench
