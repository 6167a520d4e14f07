// The HTTP face service; see server.h. cpp-httplib parses HTTP (requests, multipart bodies,
// limits, timeouts) and runs each connection on a thread of its pool; a handler turns the
// request into front-door submissions, waits for their results and answers in the CLI's fields.
#include "apps/serve/server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <future>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <utility>

#include "apps/face_json.h"
#include "apps/serve/metrics.h"
#include "engine/core/error.h"
#include "engine/image/image_io.h"
#include "engine/pipeline/enroll.h"
#include "engine/search/gallery.h"
#include "engine/search/recognition.h"

namespace facenet::serve {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// A request that cannot be answered with a 2xx: thrown by the handlers, answered by guarded().
struct HttpError {
  int status;
  std::string error, detail;
  int retry_after_s = 0;  // > 0: sent as Retry-After
};

[[noreturn]] void http_fail(int status, std::string error, std::string detail) {
  throw HttpError{status, std::move(error), std::move(detail)};
}

void answer_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // Names and file names come from the client and need not be UTF-8: replaced, not thrown.
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n",
                  "application/json");
}

void answer_error(httplib::Response& res, const HttpError& e) {
  if (e.retry_after_s > 0) res.set_header("Retry-After", std::to_string(e.retry_after_s));
  answer_json(res, e.status, {{"error", e.error}, {"detail", e.detail}});
}

// The error names of the statuses the library answers itself (payload too large, bad request
// line, no route, ...).
const char* error_name(int status) {
  switch (status) {
    case 400:
      return "bad request";
    case 401:
      return "unauthorized";
    case 403:
      return "forbidden";
    case 404:
      return "not found";
    case 405:
      return "method not allowed";
    case 408:
      return "request timeout";
    case 413:
      return "too large";
    case 414:
      return "uri too long";
    case 415:
      return "unsupported media type";
    case 422:
      return "no face";
    case 431:
      return "headers too large";
    case 503:
      return "busy";
    default:
      return status >= 500 ? "internal error" : "error";
  }
}

// ---- query parameters --------------------------------------------------------------------

// The query, checked against the parameters the endpoint knows (a typo is a 400, as the CLI
// refuses an unknown option).
class Query {
 public:
  Query(const httplib::Request& req, std::set<std::string> known) : req_(req) {
    for (const auto& [name, value] : req.params) {
      if (!known.count(name)) {
        std::string names;
        for (const auto& k : known) names += (names.empty() ? "" : ", ") + k;
        http_fail(400, "bad query",
                  "unknown query parameter '" + name + "' (this endpoint takes " +
                      (names.empty() ? "none" : names) + ")");
      }
      if (req.params.count(name) > 1)
        http_fail(400, "bad query", "query parameter '" + name + "' given more than once");
    }
  }

  std::string text(const std::string& name, const std::string& fallback,
                   const std::set<std::string>& choices = {}) const {
    if (!req_.has_param(name.c_str())) return fallback;
    std::string v = req_.get_param_value(name.c_str());
    if (!choices.empty() && !choices.count(v)) {
      std::string list;
      for (const auto& c : choices) list += (list.empty() ? "" : " | ") + c;
      http_fail(400, "bad query", name + "='" + v + "' (expected " + list + ")");
    }
    return v;
  }

  int64_t integer(const std::string& name, int64_t fallback, int64_t lo, int64_t hi) const {
    if (!req_.has_param(name.c_str())) return fallback;
    const std::string v = req_.get_param_value(name.c_str());
    try {
      size_t used = 0;
      const long long x = std::stoll(v, &used);
      if (used == v.size() && x >= lo && x <= hi) return x;
    } catch (const std::exception&) {
    }
    http_fail(400, "bad query",
              name + "='" + v + "' (expected an integer from " + std::to_string(lo) + " to " +
                  std::to_string(hi) + ")");
  }

  double number(const std::string& name, double fallback) const {  // finite, >= 0
    if (!req_.has_param(name.c_str())) return fallback;
    const std::string v = req_.get_param_value(name.c_str());
    try {
      size_t used = 0;
      const double x = std::stod(v, &used);
      if (used == v.size() && std::isfinite(x) && x >= 0) return x;
    } catch (const std::exception&) {
    }
    http_fail(400, "bad query", name + "='" + v + "' (expected a finite number >= 0)");
  }

  bool flag(const std::string& name) const {
    return text(name, "false", {"true", "false", "1", "0"}) == "true" || text(name, "false") == "1";
  }

 private:
  const httplib::Request& req_;
};

const std::set<std::string> kFaceParams = {"align", "detector", "upsample", "jitter", "landmarks"};

std::set<std::string> with(std::set<std::string> a, std::initializer_list<const char*> more) {
  for (const char* m : more) a.insert(m);
  return a;
}

// The CLI's --align/--detector/--upsample/--jitter, with the CLI's defaults
// (cli_common.cpp: PipelineArgs::request).
RequestOptions face_options(const Query& q, Task task, const char* default_align) {
  const std::string align = q.text("align", default_align, {"none", "largest", "all"});
  const std::string detector = q.text("detector", "hog", {"hog", "cnn", "hog+cnn-retry"});
  RequestOptions r;
  r.task = task;
  r.faces.detector = align == "none" ? DetectorKind::kNone : parse_detector(detector);
  if (align != "none") r.faces.pick = parse_face_pick(align);
  r.faces.upsample = static_cast<int>(q.integer("upsample", 0, 0, 3));
  r.faces.jitter = static_cast<int>(q.integer("jitter", 0, 0, 1000));
  return r;
}

// ---- images of a request -----------------------------------------------------------------

struct Upload {
  std::string name;
  const std::string* data;  // the request's body or one of its parts
};

bool is_image_type(const std::string& type) {
  const std::string t = type.substr(0, type.find(';'));
  return t.empty() || t.rfind("image/", 0) == 0 || t == "application/octet-stream";
}

}  // namespace

bool is_loopback_host(const std::string& host) {
  if (host == "localhost" || host == "::1" || host == "[::1]") return true;
  in_addr a{};
  return inet_pton(AF_INET, host.c_str(), &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

// httplib's Server, with the listening socket's backlog raised after binding: the library
// listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, compiled into Debian's library), so
// 64 clients connecting at once lose SYNs and wait out TCP's 1 s, 3 s, 7 s retransmissions.
// listen() again on a listening socket only changes its backlog (Linux).
class HttpServer : public httplib::Server {
 public:
  void raise_backlog(int backlog) {
    if (svr_sock_ != INVALID_SOCKET) ::listen(svr_sock_, backlog);
  }
  // httplib closes the socket only when listening ends: a server bound but never run would
  // keep its port.
  void close_if_never_run() {
    if (!is_running() && svr_sock_ != INVALID_SOCKET) ::close(svr_sock_.exchange(INVALID_SOCKET));
  }
};

struct Server::Impl {
  Pipeline& pipeline;
  ServerOptions opt;
  HttpServer http;
  int port = 0;
  Metrics metrics;
  std::atomic<bool> draining{false};
  std::atomic<bool> run_entered{false}, run_exited{false};

  // The one gallery connection (Gallery is single-threaded) and what is known of it.
  std::mutex gallery_mu;
  std::optional<Gallery> gallery;
  std::atomic<int64_t> identities{0}, embeddings{0};

  Impl(Pipeline& p, ServerOptions o) : pipeline(p), opt(std::move(o)) {
    if (!opt.keys && !opt.insecure_public && !is_loopback_host(opt.host))
      fail("--host ", opt.host,
           ": without --api-keys the service listens on loopback only (127.0.0.1, ::1); give "
           "--api-keys <file>, or --insecure-public to serve anyone who can reach the port");
    if (opt.http_threads < 1) fail("--http-threads must be >= 1 (got ", opt.http_threads, ")");
    open_gallery();
    routes();
    configure_http();
    port = opt.port == 0 ? http.bind_to_any_port(opt.host)
                         : (http.bind_to_port(opt.host, opt.port) ? opt.port : -1);
    if (port <= 0) fail("cannot listen on ", opt.host, ":", opt.port, " (in use, or a bad host)");
    http.raise_backlog(SOMAXCONN);
  }

  // ---- gallery ---------------------------------------------------------------------------

  void open_gallery() {
    if (opt.gallery.empty()) fail("--gallery is required");
    if (opt.create_gallery && !std::filesystem::exists(opt.gallery))
      Gallery::create(opt.gallery, {pipeline.spec()});
    gallery.emplace(Gallery::open(opt.gallery, GalleryMode::kWrite));
    std::lock_guard<std::mutex> lock(gallery_mu);
    reload_index();
  }

  // Caller holds gallery_mu. The whole index is rebuilt from the gallery: simple, and a few
  // milliseconds per 10,000 rows; requests already searching keep the index they took.
  void reload_index() {
    const GalleryStats s = gallery->stats();
    if (s.embeddings > 0) pipeline.set_gallery(gallery->load_all(pipeline.spec().model));
    identities = s.identities;
    embeddings = s.embeddings;
  }

  // ---- HTTP plumbing ---------------------------------------------------------------------

  void configure_http() {
    const int threads = opt.http_threads;
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    http.set_payload_max_length(opt.limits.max_body_bytes);
    http.set_read_timeout(opt.limits.read_timeout_s, 0);
    http.set_write_timeout(opt.limits.write_timeout_s, 0);
    http.set_keep_alive_timeout(5);
    http.set_keep_alive_max_count(100000);
    // Answers are written as headers then body: without this, Nagle's algorithm holds the body
    // until the client's delayed ACK (~40 ms per request on loopback).
    http.set_tcp_nodelay(true);
    http.set_pre_routing_handler([](const httplib::Request&, httplib::Response&) {
      request_start = Clock::now();
      return httplib::Server::HandlerResponse::Unhandled;
    });
    // The library's own refusals (413 payload, 404 route, 400 parse) get our error body too.
    const std::string too_large = "the request body is over " +
                                  std::to_string(opt.limits.max_body_bytes) +
                                  " bytes (--max-body-bytes)";
    http.set_error_handler(httplib::Server::HandlerWithResponse(
        [too_large](const httplib::Request&, httplib::Response& res) {
          if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
          const char* detail = res.status == 404   ? "no such endpoint"
                               : res.status == 413 ? too_large.c_str()
                               : res.status == 400 ? "the request could not be parsed"
                                                   : "see the status code";
          answer_json(res, res.status, {{"error", error_name(res.status)}, {"detail", detail}});
          return httplib::Server::HandlerResponse::Handled;
        }));
    http.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
          answer_json(res, 500, {{"error", "internal error"}, {"detail", "unexpected exception"}});
        });
    // Counted here, after every answer, so that refusals before routing are counted too.
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      metrics.observe(req.method, endpoint_label(req.path), res.status, seconds_since(req));
    });
  }

  // Set when a request is routed, on the thread that will answer it; requests the library
  // refuses before that (a bad request line, a body over the limit) are counted with 0 s.
  static thread_local Clock::time_point request_start;
  static double seconds_since(const httplib::Request&) {
    const Clock::time_point start = std::exchange(request_start, Clock::time_point{});
    if (start == Clock::time_point{}) return 0;
    return std::chrono::duration<double>(Clock::now() - start).count();
  }

  // The header limit, then the access key; throws HttpError. Checked in the handler, once the
  // body is read (at most --max-body-bytes): an answer from httplib's pre-routing hook would
  // leave the body unread, to be parsed as the next request of the keep-alive connection.
  void admit(const httplib::Request& req, httplib::Response& res) const {
    size_t header_bytes = 0;
    for (const auto& [k, v] : req.headers) header_bytes += k.size() + v.size() + 4;
    if (header_bytes > opt.limits.max_header_bytes)
      http_fail(431, "headers too large",
                std::to_string(header_bytes) + " bytes of headers (at most " +
                    std::to_string(opt.limits.max_header_bytes) + ")");
    if (req.path == "/healthz" || req.path == "/readyz" || !opt.keys) return;
    const std::string auth = req.get_header_value("Authorization");
    const std::string bearer = "Bearer ";
    if (auth.compare(0, bearer.size(), bearer) != 0) {
      res.set_header("WWW-Authenticate", "Bearer");
      http_fail(401, "unauthorized", "an Authorization: Bearer <key> header is required");
    }
    const Access access = opt.keys->check(auth.substr(bearer.size()));
    if (access == Access::kNone) {
      res.set_header("WWW-Authenticate", "Bearer error=\"invalid_token\"");
      http_fail(401, "unauthorized", "the key is not valid");  // never echo the key
    }
    const bool writes = req.method != "GET" && req.path.rfind("/v1/identities", 0) == 0;
    if (writes && access != Access::kReadWrite)
      http_fail(403, "forbidden", req.method + " " + req.path + " needs a read-write key");
  }

  // Runs a handler, turning what it throws into the error answer.
  template <typename F>
  httplib::Server::Handler guarded(F&& handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      try {
        admit(req, res);
        handler(req, res);
      } catch (const HttpError& e) {
        answer_error(res, e);
      } catch (const Error& e) {  // a caller mistake the engine found (e.g. a bad name)
        answer_error(res, {400, "bad request", e.what()});
      } catch (const std::exception& e) {
        std::cerr << "facenet serve: " << req.method << " " << req.path << ": " << e.what() << "\n";
        answer_error(res, {500, "internal error", e.what()});
      }
    };
  }

  void routes() {
    http.Get("/healthz", guarded([](const auto&, auto& res) {
               answer_json(res, 200, {{"status", "ok"}});
             }));
    http.Get("/readyz", guarded([this](const auto&, auto& res) { readyz(res); }));
    http.Get("/metrics", guarded([this](const auto& req, auto& res) {
               (void)Query(req, {});
               res.set_content(metrics.render(pipeline.stats(), pipeline.options().max_batch,
                                              {identities, embeddings}),
                               "text/plain; version=0.0.4");
             }));
    http.Post("/v1/detect", guarded([this](const auto& req, auto& res) { detect(req, res); }));
    http.Post("/v1/encode", guarded([this](const auto& req, auto& res) { encode(req, res); }));
    http.Post("/v1/identify", guarded([this](const auto& req, auto& res) { identify(req, res); }));
    http.Post("/v1/verify",
              guarded([this](const auto& req, auto& res) { verify_faces(req, res); }));
    http.Get("/v1/identities", guarded([this](const auto& req, auto& res) { list(req, res); }));
    http.Get("/v1/identities/([^/]+)",
             guarded([this](const auto& req, auto& res) { get_identity(req, res); }));
    http.Delete("/v1/identities/([^/]+)",
                guarded([this](const auto& req, auto& res) { remove(req, res); }));
    http.Post("/v1/identities/([^/]+)/faces",
              guarded([this](const auto& req, auto& res) { enrol(req, res); }));
  }

  void readyz(httplib::Response& res) {
    if (draining) http_fail(503, "draining", "the service is shutting down");
    answer_json(res, 200,
                {{"status", "ready"},
                 {"model", pipeline.spec().model},
                 {"backend", pipeline.backend_name()},
                 {"gallery", opt.gallery},
                 {"identities", identities.load()}});
  }

  // ---- images through the front door -----------------------------------------------------

  // The request's images: each part of a multipart/form-data body (in the order of their field
  // names, then as sent: name them all "image" to keep the order), or the body itself.
  std::vector<Upload> uploads(const httplib::Request& req) const {
    std::vector<Upload> out;
    const std::string type = req.get_header_value("Content-Type");
    check_content_type(req);
    if (req.is_multipart_form_data()) {
      for (const auto& [field, part] : req.files)
        out.push_back({part.filename.empty() ? field : part.filename, &part.content});
      if (out.empty()) http_fail(400, "no image", "the multipart body has no parts");
    } else {
      if (req.body.empty()) http_fail(400, "no image", "the request body is empty");
      out.push_back({"body", &req.body});
    }
    if (static_cast<int>(out.size()) > opt.limits.max_images)
      http_fail(413, "too many images",
                std::to_string(out.size()) + " images (at most " +
                    std::to_string(opt.limits.max_images) + " per request)");
    for (const Upload& u : out) {
      if (u.data->empty()) http_fail(400, "no image", u.name + ": empty part");
      if (const auto size = image_header_size(
              reinterpret_cast<const unsigned char*>(u.data->data()), u.data->size()))
        check_pixels(u.name, size->width, size->height);
    }
    return out;
  }

  // First thing in every image handler: the library has already merged the fields of an
  // application/x-www-form-urlencoded body (curl --data-binary's default) into the query.
  static void check_content_type(const httplib::Request& req) {
    const std::string type = req.get_header_value("Content-Type");
    if (!req.is_multipart_form_data() && !is_image_type(type))
      http_fail(415, "unsupported media type",
                "Content-Type '" + type +
                    "': send one image (image/*, application/octet-stream) or "
                    "multipart/form-data with image parts");
  }

  void check_pixels(const std::string& name, int64_t width, int64_t height) const {
    if (width * height > opt.limits.max_pixels)
      http_fail(413, "image too large",
                name + ": " + std::to_string(width) + "x" + std::to_string(height) +
                    " pixels (at most " + std::to_string(opt.limits.max_pixels) + ")");
  }

  // Submits every upload, waits for all, and fails the request on the first image that could
  // not be done (busy first: the client should retry the whole request).
  std::vector<ImageResult> run_images(const std::vector<Upload>& ups, const RequestOptions& ro) {
    std::vector<std::future<ImageResult>> pending;
    pending.reserve(ups.size());
    for (const Upload& u : ups)
      pending.push_back(pipeline.submit(
          ImageInput::bytes(std::vector<uint8_t>(u.data->begin(), u.data->end()), u.name), ro));
    const auto deadline =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(opt.limits.request_timeout_s));
    std::vector<ImageResult> results;
    for (auto& f : pending) {
      if (f.wait_until(deadline) != std::future_status::ready)
        http_fail(504, "timeout",
                  "the pipeline did not answer within " +
                      std::to_string(opt.limits.request_timeout_s) + " s");
      results.push_back(f.get());
    }
    for (const ImageResult& r : results)
      if (r.status == InputStatus::kBusy)
        throw HttpError{503, "busy", "the pipeline's queue is full; retry later",
                        opt.retry_after_s};
    int64_t faces = 0;
    for (const ImageResult& r : results) {
      if (r.status == InputStatus::kUndecodable) http_fail(415, "not a decodable image", r.error);
      if (!r.ok()) http_fail(500, "engine failed", r.error);
      // Formats whose header image_header_size() cannot read are checked once decoded.
      check_pixels(r.name, r.width, r.height);
      if (ro.task == Task::kEncode || ro.task == Task::kIdentify)
        faces += static_cast<int64_t>(r.faces.size());
    }
    metrics.add_faces_encoded(faces);
    return results;
  }

  static json image_json(const ImageResult& r, json faces) {
    return {{"image", r.name}, {"width", r.width}, {"height", r.height}, {"faces", faces}};
  }

  // Per face: the CLI's position fields, then `body`'s, and landmarks when asked.
  template <typename FaceFields>
  static json answer_images(const std::vector<ImageResult>& results, bool crops, bool landmarks,
                            FaceFields&& fields) {
    json images = json::array();
    for (const ImageResult& r : results) {
      json faces = json::array();
      for (size_t i = 0; i < r.faces.size(); ++i) {
        json f = cli::face_position_json(i, r.faces[i], crops);
        if (landmarks) {
          f["landmarks68"] = cli::points_json(r.faces[i].face.landmarks);
          f["landmarks5"] = cli::points_json(r.faces[i].face.landmarks5);
        }
        f.update(fields(r, i));
        faces.push_back(std::move(f));
      }
      images.push_back(image_json(r, std::move(faces)));
    }
    return {{"images", images}};
  }

  static bool crops_of(const RequestOptions& ro) {
    return ro.faces.detector == DetectorKind::kNone;
  }

  void detect(const httplib::Request& req, httplib::Response& res) {
    check_content_type(req);
    const Query q(req, kFaceParams);
    RequestOptions ro = face_options(q, Task::kDetect, "all");
    ro.faces.pick = FacePick::kAll;  // as `facenet detect`
    const auto results = run_images(uploads(req), ro);
    json images = json::array();
    for (const ImageResult& r : results) {
      json faces = json::array();
      for (const FaceResult& f : r.faces) faces.push_back(cli::detected_face_json(f));
      images.push_back(image_json(r, std::move(faces)));
    }
    answer_json(res, 200, {{"images", images}});
  }

  void encode(const httplib::Request& req, httplib::Response& res) {
    check_content_type(req);
    const Query q(req, kFaceParams);
    const RequestOptions ro = face_options(q, Task::kEncode, "none");
    const auto results = run_images(uploads(req), ro);
    answer_json(res, 200,
                answer_images(results, crops_of(ro), q.flag("landmarks"),
                              [](const ImageResult& r, size_t i) {
                                return json{{"embedding", r.faces[i].embedding}};
                              }));
  }

  double threshold_of(const Query& q) const {
    return q.number("threshold", pipeline.default_threshold());
  }

  void identify(const httplib::Request& req, httplib::Response& res) {
    check_content_type(req);
    const Query q(req, with(kFaceParams, {"k", "threshold"}));
    RequestOptions ro = face_options(q, Task::kIdentify, "none");
    ro.k = static_cast<int>(q.integer("k", 5, 1, 1024));
    ro.threshold = threshold_of(q);
    const auto ups = uploads(req);
    // An empty gallery has no index to search: every face is unknown.
    const bool empty = embeddings == 0;
    if (empty) ro.task = Task::kEncode;
    const auto results = run_images(ups, ro);
    answer_json(res, 200,
                answer_images(results, crops_of(ro), q.flag("landmarks"),
                              [&](const ImageResult& r, size_t i) {
                                const auto& match = r.faces[i].match;
                                return empty || !match ? unknown_json(ro.threshold)
                                                       : match->to_json(ro.threshold);
                              }));
  }

  // What identify answers against an empty gallery: nobody, at no finite distance (null).
  static json unknown_json(double threshold) {
    Identification nobody;
    nobody.best = "unknown";
    nobody.distance = INFINITY;
    return nobody.to_json(threshold);
  }

  void require_faces(const std::vector<ImageResult>& results) const {
    for (const ImageResult& r : results)
      if (r.faces.empty()) http_fail(422, "no face", "no face found in " + r.name);
  }

  void verify_faces(const httplib::Request& req, httplib::Response& res) {
    check_content_type(req);
    const Query q(req, with(kFaceParams, {"name", "threshold"}));
    const std::string name = q.text("name", "");
    if (name.empty()) http_fail(400, "bad query", "verify needs ?name=<identity>");
    const RequestOptions ro = face_options(q, Task::kEncode, "none");
    const double threshold = threshold_of(q);
    const auto ups = uploads(req);
    require_identity(name);  // unknown: 404 before anything is encoded
    const auto results = run_images(ups, ro);
    require_faces(results);
    std::lock_guard<std::mutex> lock(gallery_mu);
    answer_json(res, 200,
                answer_images(results, crops_of(ro), q.flag("landmarks"),
                              [&](const ImageResult& r, size_t i) {
                                return verify(*gallery, pipeline.spec(), name,
                                              r.faces[i].embedding.data(), threshold)
                                    .to_json();
                              }));
  }

  // ---- the gallery -----------------------------------------------------------------------

  static json identity_json(const Identity& id) {
    return {{"id", id.id},
            {"name", id.name},
            {"embeddings", id.embeddings},
            {"created_at", id.created_at},
            {"metadata", json::parse(id.metadata)}};
  }

  static std::string name_of(const httplib::Request& req) {
    const std::string name = req.matches[1];
    if (name.size() > 256) http_fail(400, "bad name", "identity names are at most 256 bytes");
    return name;
  }

  // Caller holds gallery_mu.
  void require_identity_locked(const std::string& name) {
    if (!gallery->has_identity(name))
      http_fail(404, "unknown identity", "no identity '" + name + "' in " + opt.gallery);
  }

  void require_identity(const std::string& name) {
    std::lock_guard<std::mutex> lock(gallery_mu);
    require_identity_locked(name);
  }

  void list(const httplib::Request& req, httplib::Response& res) {
    const Query q(req, {"limit", "offset"});
    const int64_t limit = q.integer("limit", 100, 1, 1000);
    const int64_t offset = q.integer("offset", 0, 0, INT64_MAX);
    std::vector<Identity> all;
    {
      std::lock_guard<std::mutex> lock(gallery_mu);
      all = gallery->list_identities();
    }
    json page = json::array();
    for (int64_t i = offset; i < static_cast<int64_t>(all.size()) && i < offset + limit; ++i)
      page.push_back(identity_json(all[i]));
    answer_json(
        res, 200,
        {{"identities", page}, {"total", all.size()}, {"limit", limit}, {"offset", offset}});
  }

  void get_identity(const httplib::Request& req, httplib::Response& res) {
    (void)Query(req, {});
    const std::string name = name_of(req);
    std::lock_guard<std::mutex> lock(gallery_mu);
    require_identity_locked(name);
    answer_json(res, 200, identity_json(gallery->find_identity(name)));
  }

  void remove(const httplib::Request& req, httplib::Response& res) {
    (void)Query(req, {});
    const std::string name = name_of(req);
    std::lock_guard<std::mutex> lock(gallery_mu);
    require_identity_locked(name);
    const int64_t gone = gallery->remove_identity(name);  // committed before the answer
    reload_index();
    answer_json(res, 200, {{"removed", name}, {"embeddings", gone}});
  }

  // Every image must give a face (422 otherwise, nothing enrolled), so that the client knows
  // exactly what was added; the rows are committed in one transaction before the 201.
  void enrol(const httplib::Request& req, httplib::Response& res) {
    check_content_type(req);
    const Query q(req, {"align", "detector", "upsample", "jitter"});
    const std::string name = name_of(req);
    const RequestOptions ro = face_options(q, Task::kEncode, "none");
    auto results = run_images(uploads(req), ro);
    require_faces(results);
    const EncodedRows rows = rows_of(results, crops_of(ro), {});
    std::lock_guard<std::mutex> lock(gallery_mu);
    const Identity id =
        gallery->enroll(name, pipeline.spec(), rows.embeddings.data(), rows.rows(), rows.sources);
    reload_index();
    answer_json(
        res, 201,
        {{"name", id.name}, {"id", id.id}, {"embeddings", id.embeddings}, {"added", rows.rows()}});
  }
};

thread_local Clock::time_point Server::Impl::request_start;

Server::Server(Pipeline& pipeline, ServerOptions options)
    : impl_(std::make_unique<Impl>(pipeline, std::move(options))) {}

Server::~Server() {
  stop();
}

int Server::port() const {
  return impl_->port;
}

void Server::run() {
  impl_->run_entered = true;
  if (!impl_->draining) impl_->http.listen_after_bind();
  impl_->run_exited = true;
}

// httplib's stop() does nothing before listening has begun, so a stop() that races run()
// waits for the listener to be up (or for run() to have given up) before stopping it.
void Server::stop() {
  impl_->draining = true;
  if (!impl_->run_entered) return;
  while (!impl_->http.is_running() && !impl_->run_exited)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  impl_->http.stop();
}

}  // namespace facenet::serve
