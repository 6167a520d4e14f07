// Prometheus text rendering of the service's counters; see metrics.h.
#include "apps/serve/metrics.h"

#include <algorithm>
#include <sstream>

namespace facenet::serve {

std::string endpoint_label(const std::string& path) {
  static const char* fixed[] = {"/healthz",   "/readyz",      "/metrics",   "/v1/detect",
                                "/v1/encode", "/v1/identify", "/v1/verify", "/v1/identities"};
  for (const char* f : fixed)
    if (path == f) return f;
  const std::string prefix = "/v1/identities/";
  if (path.compare(0, prefix.size(), prefix) != 0 || path.size() == prefix.size()) return "other";
  const size_t slash = path.find('/', prefix.size());
  if (slash == std::string::npos) return "/v1/identities/{name}";
  if (path.compare(slash, std::string::npos, "/faces") == 0) return "/v1/identities/{name}/faces";
  return "other";
}

void Metrics::observe(const std::string& method, const std::string& endpoint, int status,
                      double seconds) {
  const std::string key = method + " " + endpoint;
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{key, status}];
  Histogram& h = latency_[key];
  const auto bucket = std::lower_bound(kLatencyBuckets.begin(), kLatencyBuckets.end(), seconds) -
                      kLatencyBuckets.begin();
  if (bucket < static_cast<long>(kLatencyBuckets.size())) ++h.below[bucket];
  ++h.count;
  h.sum += seconds;
}

void Metrics::add_faces_encoded(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  faces_encoded_ += n;
}

namespace {

// `GET /v1/x` -> method="GET",endpoint="/v1/x"
std::string labels_of(const std::string& key) {
  const size_t space = key.find(' ');
  return "method=\"" + key.substr(0, space) + "\",endpoint=\"" + key.substr(space + 1) + "\"";
}

}  // namespace

std::string Metrics::render(const PipelineStats& pipeline, int max_batch,
                            const GalleryGauges& gallery) const {
  std::ostringstream o;
  std::lock_guard<std::mutex> lock(mu_);
  o << "# HELP facenet_http_requests_total Requests answered, by endpoint and status.\n"
       "# TYPE facenet_http_requests_total counter\n";
  for (const auto& [key, n] : requests_)
    o << "facenet_http_requests_total{" << labels_of(key.first) << ",status=\"" << key.second
      << "\"} " << n << "\n";
  o << "# HELP facenet_http_request_duration_seconds Time from the request's headers to its "
       "answer.\n# TYPE facenet_http_request_duration_seconds histogram\n";
  for (const auto& [key, h] : latency_) {
    int64_t cumulative = 0;
    for (size_t b = 0; b < kLatencyBuckets.size(); ++b) {
      cumulative += h.below[b];
      o << "facenet_http_request_duration_seconds_bucket{" << labels_of(key) << ",le=\""
        << kLatencyBuckets[b] << "\"} " << cumulative << "\n";
    }
    o << "facenet_http_request_duration_seconds_bucket{" << labels_of(key) << ",le=\"+Inf\"} "
      << h.count << "\n"
      << "facenet_http_request_duration_seconds_sum{" << labels_of(key) << "} " << h.sum << "\n"
      << "facenet_http_request_duration_seconds_count{" << labels_of(key) << "} " << h.count
      << "\n";
  }
  // Batches by size: powers of two up to max_batch (the pipeline counts every size exactly).
  o << "# HELP facenet_batch_size Face chips per forward pass of the dynamic batcher.\n"
       "# TYPE facenet_batch_size histogram\n";
  int64_t cumulative = 0, chips = 0;
  size_t size = 0;
  for (int le = 1;; le = std::min(le * 2, max_batch)) {
    for (; size <= static_cast<size_t>(le) && size < pipeline.batch_sizes.size(); ++size) {
      cumulative += pipeline.batch_sizes[size];
      chips += static_cast<int64_t>(size) * pipeline.batch_sizes[size];
    }
    o << "facenet_batch_size_bucket{le=\"" << le << "\"} " << cumulative << "\n";
    if (le >= max_batch) break;
  }
  o << "facenet_batch_size_bucket{le=\"+Inf\"} " << pipeline.batches << "\n"
    << "facenet_batch_size_sum " << chips << "\nfacenet_batch_size_count " << pipeline.batches
    << "\n";
  o << "# HELP facenet_queue_depth Images submitted to the pipeline and not yet answered.\n"
       "# TYPE facenet_queue_depth gauge\nfacenet_queue_depth "
    << pipeline.in_flight << "\n"
    << "# HELP facenet_busy_total Images refused because the pipeline's queue was full.\n"
       "# TYPE facenet_busy_total counter\nfacenet_busy_total "
    << pipeline.busy << "\n"
    << "# HELP facenet_faces_encoded_total Faces whose embedding was computed for a request.\n"
       "# TYPE facenet_faces_encoded_total counter\nfacenet_faces_encoded_total "
    << faces_encoded_ << "\n"
    << "# HELP facenet_gallery_identities People in the gallery.\n"
       "# TYPE facenet_gallery_identities gauge\nfacenet_gallery_identities "
    << gallery.identities << "\n"
    << "# HELP facenet_gallery_embeddings Enrolled embeddings in the gallery.\n"
       "# TYPE facenet_gallery_embeddings gauge\nfacenet_gallery_embeddings "
    << gallery.embeddings << "\n";
  return o.str();
}

}  // namespace facenet::serve
