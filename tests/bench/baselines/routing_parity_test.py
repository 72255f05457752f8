#!/usr/bin/env python3
"""The Python routing of torch_all_to_all.py against the golden values that
tests/bench/routing_test.cc pins for the C++ side (runs without torch: it is stubbed)."""
import importlib.util
import os
import sys
import types

sys.dont_write_bytecode = True  # keep the source tree clean when CTest runs this

torch = types.ModuleType("torch")
torch.distributed = types.ModuleType("torch.distributed")
torch.bfloat16 = torch.float16 = torch.float32 = None
sys.modules["torch"], sys.modules["torch.distributed"] = torch, torch.distributed

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_all_to_all.py")
spec = importlib.util.spec_from_file_location("torch_all_to_all", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

case = {"tokens": 4, "top_k": 8, "experts": 256, "seed": 1, "routing": "random"}
idx, weights, valid = module.make_routing(case, 1)
assert idx[0] == [130, 160, 230, 240, 124, 58, 40, 138], idx[0]
assert idx[3] == [55, 8, 134, 215, 221, 222, 125, 203], idx[3]
assert weights[0][0] == 0.19382435083389282 and weights[0][1] == 0.67741531133651733, weights[0]
assert valid == 32
case["routing"] = "skewed"
idx, _, _ = module.make_routing(case, 1)
assert idx[0] == [130, 160, 230, 240, 4, 2, 0, 60], idx[0]
assert idx[3] == [7, 8, 6, 215, 221, 2, 125, 3], idx[3]
print("routing parity: OK")
