// `facenet serve`: options -> one Pipeline and one Server; SIGTERM/SIGINT stop it gracefully.
#include "apps/serve/cli_serve.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <iostream>
#include <mutex>
#include <thread>

#include "apps/cli_common.h"
#include "apps/serve/server.h"
#include "engine/core/error.h"

namespace facenet::cli {

namespace {

struct ServeArgs {
  PipelineArgs p;
  serve::ServerOptions server;
  std::string api_keys;
  double max_delay_ms = -1;
  int max_queue = 256;
};

// SIGTERM and SIGINT stop the server from a thread of ours: the handler (run by whichever
// thread the kernel picks, OpenBLAS's and OpenMP's included, which exist before we could mask
// signals) only writes the signal number to a pipe, the one thing it may safely do.
int g_signal_pipe[2] = {-1, -1};

extern "C" void on_stop_signal(int sig) {
  const unsigned char s = static_cast<unsigned char>(sig);
  [[maybe_unused]] const ssize_t n = write(g_signal_pipe[1], &s, 1);
}

class SignalStopper {
 public:
  explicit SignalStopper(serve::Server*& server) {
    if (pipe(g_signal_pipe) != 0) fail("serve: cannot make the signal pipe");
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    thread_ = std::thread([this, &server] {
      unsigned char sig = 0;
      while (read(g_signal_pipe[0], &sig, 1) == 1 && sig != 0) {  // 0: the destructor's wake-up
        std::cerr << "facenet serve: " << (sig == SIGTERM ? "SIGTERM" : "SIGINT")
                  << ": draining in-flight requests\n";
        stopped_ = true;
        std::lock_guard<std::mutex> lock(mu_);
        if (server) server->stop();
      }
    });
  }
  ~SignalStopper() {
    const unsigned char zero = 0;
    [[maybe_unused]] const ssize_t n = write(g_signal_pipe[1], &zero, 1);
    thread_.join();
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
  }
  bool stopped() const { return stopped_; }
  // Held while the server pointer changes, so that a stop never meets a destroyed server.
  std::mutex& mutex() { return mu_; }

 private:
  std::atomic<bool> stopped_{false};
  std::mutex mu_;
  std::thread thread_;
};

int run_serve(ServeArgs& a) {
  serve::Server* running = nullptr;
  SignalStopper signals(running);  // before any thread is made
  if (!a.api_keys.empty()) a.server.keys = serve::AccessKeys::load(a.api_keys);
  PipelineOptions po = a.p.options();
  po.max_delay_ms = a.max_delay_ms;
  po.max_queue = a.max_queue;
  Pipeline pipeline(a.p.model, po);
  serve::Server server(pipeline, a.server);
  {
    std::lock_guard<std::mutex> lock(signals.mutex());
    running = &server;
  }
  if (signals.stopped()) return 0;  // a signal came while loading
  std::cerr << "facenet serve: listening on http://" << a.server.host << ":" << server.port()
            << " (" << pipeline.spec().model << " on " << pipeline.backend_name() << ", gallery "
            << a.server.gallery << ", "
            << (a.server.keys ? std::to_string(a.server.keys->size()) + " access keys"
                              : std::string("no access keys"))
            << ")\n";
  server.run();
  {
    std::lock_guard<std::mutex> lock(signals.mutex());
    running = nullptr;
  }
  std::cerr << "facenet serve: stopped\n";
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& app, int& exit_code) {
  auto* s = app.add_subcommand(
      "serve", "HTTP face service: detect, encode, identify, verify and manage the gallery");
  auto a = std::make_shared<ServeArgs>();
  serve::ServerOptions& o = a->server;
  serve::ServerLimits& l = o.limits;
  s->add_option("--model", a->p.model, "Model file (.safetensors)")->required();
  s->add_option("--gallery", o.gallery, "Gallery file (SQLite)")->required();
  s->add_flag("--create", o.create_gallery, "Create the gallery when it does not exist");
  s->add_option("--device", a->p.device, "cpu | cuda | cpu-reference (slow oracle)")
      ->check(CLI::IsMember({"cpu", "cuda", "cpu-reference"}))
      ->capture_default_str();
  s->add_option("--precision", a->p.precision,
                "fp32 | bf16 (cpu: where the CPU has bf16 instructions) | fp16 (cuda)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str();
  s->add_option("--threads", a->p.threads, "CPU threads of the pipeline (0 = all cores)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  s->add_option(
      "--dlib-models", a->p.dlib_models,
      "Folder of dlib's models (default: $FACENET_DLIB_MODELS, else ~/.cache/facenet/dlib)");
  s->add_option("--host", o.host, "Address to listen on")->capture_default_str();
  s->add_option("--port", o.port, "Port (0: any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  s->add_option("--max-batch", a->p.batch, "Face chips per forward pass, across requests")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  s->add_option("--max-delay-ms", a->max_delay_ms,
                "Longest a chip waits for a fuller batch (default: 10 on the CPU, 2 on CUDA)")
      ->check(CLI::Range(0.0, 60000.0));
  s->add_option("--max-queue", a->max_queue,
                "Images in the pipeline at once; beyond, requests get 503 + Retry-After")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  s->add_option("--api-keys", a->api_keys,
                "File of `<key> ro|rw` lines (# comments): every endpoint but /healthz and "
                "/readyz then needs Authorization: Bearer <key>, and enrol/delete a rw key");
  s->add_flag("--insecure-public", o.insecure_public,
              "Allow a non-loopback --host without --api-keys (anyone reaching the port may "
              "read and change the gallery)");
  s->add_option("--http-threads", o.http_threads, "Connections served at once")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  s->add_option("--max-body-bytes", l.max_body_bytes, "Largest request body (413 above)")
      ->capture_default_str();
  s->add_option("--max-pixels", l.max_pixels,
                "Largest image, width x height, read from its header before decoding (413)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))
      ->capture_default_str();
  s->add_option("--max-images", l.max_images, "Most images in one request (413 above)")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  s->add_option("--max-header-bytes", l.max_header_bytes,
                "Most bytes of header names and values together (431 above; a single line "
                "over 8 KiB is refused by the HTTP library)")
      ->capture_default_str();
  s->add_option("--request-timeout-s", l.request_timeout_s,
                "Longest wait for the pipeline's answer (504 after)")
      ->check(CLI::Range(0.001, 3600.0))
      ->capture_default_str();
  s->add_option("--read-timeout-s", l.read_timeout_s,
                "A client silent this long while sending a request is dropped")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  s->add_option("--retry-after-s", o.retry_after_s, "Retry-After of a 503")
      ->check(CLI::Range(1, 3600))
      ->capture_default_str();
  s->footer(
      "Endpoints (JSON; see apps/serve/openapi.yaml and the README's \"HTTP service\"):\n"
      "  POST /v1/detect /v1/encode /v1/identify?k=&threshold= /v1/verify?name=   (one image\n"
      "       body, or multipart/form-data parts; query align, detector, upsample, jitter as\n"
      "       the CLI's options, with its defaults)\n"
      "  GET /v1/identities?limit=&offset=, POST /v1/identities/{name}/faces,\n"
      "  GET|DELETE /v1/identities/{name}, GET /healthz /readyz /metrics");
  s->callback([a, &exit_code] { exit_code = run_serve(*a); });
}

}  // namespace facenet::cli
