// The counters and histograms `facenet serve` shows on /metrics, in Prometheus text format.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "engine/pipeline/pipeline.h"

namespace facenet::serve {

struct GalleryGauges {
  int64_t identities = 0, embeddings = 0;
};

class Metrics {
 public:
  // One answered request: `endpoint` is its route ("/v1/identities/{name}"), never the raw
  // path, so that the label set stays bounded.
  void observe(const std::string& method, const std::string& endpoint, int status, double seconds);
  void add_faces_encoded(int64_t n);
  // Everything as Prometheus text (version 0.0.4); the pipeline's counters are read now.
  std::string render(const PipelineStats& pipeline, int max_batch,
                     const GalleryGauges& gallery) const;

  // Seconds; upper bounds of the latency histogram's buckets (+Inf is implied).
  static constexpr std::array<double, 12> kLatencyBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                             0.5,   1,    2.5,   5,    10,  30};

 private:
  struct Histogram {
    std::array<int64_t, kLatencyBuckets.size()> below{};  // per bucket, not cumulative
    int64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, int64_t> requests_;  // (method endpoint, status)
  std::map<std::string, Histogram> latency_;                 // by method endpoint
  int64_t faces_encoded_ = 0;
};

// The route label of a request path: the fixed paths themselves, identities with {name}, and
// "other" for anything else (a 404).
std::string endpoint_label(const std::string& path);

}  // namespace facenet::serve
