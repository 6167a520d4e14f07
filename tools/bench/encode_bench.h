// `facenet bench encode`: model-only encoder throughput/latency per batch size, with peers
// timed in the same run: PyTorch (tools/peer_torch.py) on the same model file and, on the CPU,
// ONNX Runtime and OpenVINO (tools/peer_onnx.py) on our ONNX export of it; each result says
// ours / the best peer. On cuda: model-only timed with CUDA events on device-resident input,
// plus end-to-end from encoded JPEG bytes in memory through the front door (engine/pipeline) (CPU
// decode overlapped with GPU conversion and forward) with the decode rate alone, and device
// memory.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/backend/backend.h"

namespace facenet {

struct EncodeBenchOptions {
  std::filesystem::path model_path;
  Device device = Device::kCpu;
  std::vector<int> batches = {1, 16, 64};
  int warmup = 2;
  int repeats = 10;
  int threads = 0;  // 0 = every core
  // Peers timed in the same run (cpu: any of these; cuda: pytorch only); empty = none.
  std::vector<std::string> peers = {"pytorch", "onnxruntime", "openvino"};
  std::string precision = "fp32";  // cpu: fp32 | bf16; cuda: fp32 | fp16 | bf16
  int micro_batch = 0;             // cpu: images per internal pass (0 = the backend's default)
  std::string layout = "auto";     // cuda: auto | nchw | nhwc
  bool end_to_end = true;          // cuda: also time JPEG bytes in memory -> embeddings
};

nlohmann::json run_encode_bench(const EncodeBenchOptions& options);

}  // namespace facenet
