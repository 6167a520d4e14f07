// `facenet bench triplet`: times triplet loss + gradient per batch size and mining mode, with
// the PyTorch peer (tools/peer_triplet_torch.py) on the same inputs in the same run.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/train/triplet.h"

namespace facenet {

struct TripletBenchOptions {
  std::vector<int64_t> batches{256, 1024, 2048, 4096, 8192};  // B values
  int64_t dim = 128;                                          // d
  std::vector<Mining> modes{Mining::kBatchAll, Mining::kBatchHard, Mining::kSemiHard};
  std::string device = "cpu";  // "cpu" (triplet_loss) or "cuda" (TripletLossCuda)
  int warmup = 2;              // untimed runs before the timed ones
  int repeats = 10;            // timed runs; median and min are reported
  int per_class = 4;           // samples per identity (P x K batches; labels shuffled)
  float margin = 0.2f;
  bool deterministic = false;  // cuda: TripletOptions::deterministic
  int threads = 0;             // cpu threads for us and for torch; 0 = OpenMP's default
  uint64_t seed = 1;           // inputs: N(0,1) rows normalised to unit length
  bool peer = true;            // run the PyTorch peer on the same inputs (same device)
  // The peer's batch-all builds B x B x B masks (chunked): above this B it is skipped and the
  // skip is recorded. 0 = automatic: 1024 on cpu, 4096 on cuda.
  int64_t peer_max_batch_all = 0;
  bool check = false;  // cuda: also run the CPU reference and report the difference
};

// Runs the benchmark; the JSON names what was measured, sizes, dtype, device, threads, our
// median/min times, the peer's (or why it is unavailable), our speed-up over the peer and the
// numerical agreement (loss, active count, gradient) per configuration. Throws facenet::Error
// on bad options (unknown device, empty sizes, cuda without a GPU).
nlohmann::json run_triplet_bench(const TripletBenchOptions& options);

}  // namespace facenet
