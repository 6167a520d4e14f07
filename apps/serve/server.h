// `facenet serve`: the HTTP face service over the front door. Every image of every request is
// submitted to one Pipeline, so concurrent requests share its dynamic batcher; the gallery is
// one SQLite connection behind a mutex, and each enrolment is committed before it is answered.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "apps/serve/access_keys.h"
#include "engine/pipeline/pipeline.h"

namespace facenet::serve {

struct ServerLimits {
  size_t max_body_bytes = 32u << 20;  // whole request body (all parts); more: 413
  int64_t max_pixels = 40'000'000;    // width x height of one image; more: 413
  int max_images = 32;                // images in one request; more: 413
  size_t max_header_bytes = 16384;    // all header names and values together; more: 431
  double request_timeout_s = 60;      // waiting for the pipeline; longer: 504
  int read_timeout_s = 10;            // a client silent this long mid-request is dropped
  int write_timeout_s = 10;
};

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (see Server::port)
  std::string gallery;
  bool create_gallery = false;     // create the gallery file when it does not exist
  std::optional<AccessKeys> keys;  // none: no auth, and loopback only (see insecure_public)
  bool insecure_public = false;    // allow a non-loopback host without keys
  int http_threads = 64;           // connections served at once (each waits on the pipeline)
  int retry_after_s = 1;           // Retry-After of a 503
  ServerLimits limits;
};

class Server {
 public:
  // Opens (or creates) the gallery, loads its index into `pipeline` and binds the socket; throws
  // facenet::Error naming what is wrong (bad host, port taken, gallery of another model, ...).
  // `pipeline` must outlive the server.
  Server(Pipeline& pipeline, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int port() const;  // the bound port
  // Serves until stop(); returns after the in-flight requests were answered.
  void run();
  // From any thread (not a signal handler): stops accepting; run() returns once drained.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A host name that only this machine can reach (127.0.0.0/8, ::1, localhost).
bool is_loopback_host(const std::string& host);

}  // namespace facenet::serve
