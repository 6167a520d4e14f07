// The front door (pipeline.h): worker threads prepare requests into face chips, one batcher
// thread groups the chips of many requests into batches and encodes them on the backend.
//
// A request's life: submit() counts it in flight (or answers kBusy) and queues it for the
// workers; a worker decodes, detects, aligns and converts its chips to the backend's input
// (floats, or 8-bit BGR for a staged backend), then hands the chips to the batcher, or
// completes the request at once when there is nothing to encode (an error, no face, kDetect).
// The batcher takes up to max_batch chips when there are that many, when no request is being
// prepared, or when the oldest chip has waited max_delay_ms; a request completes when its last
// chip is encoded. A staged backend (CUDA) gets two slots, so a batch is filled while the
// previous one runs on the device.
#include "engine/pipeline/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "engine/core/error.h"
#include "engine/image/image_decode.h"
#include "engine/image/image_io.h"

namespace facenet {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

ImageInput ImageInput::file(fs::path path) {
  ImageInput in;
  in.kind_ = Kind::kFile;
  in.name_ = path.string();
  in.path_ = std::move(path);
  return in;
}

ImageInput ImageInput::bytes(std::vector<uint8_t> data, std::string name) {
  ImageInput in;
  in.kind_ = Kind::kBytes;
  in.name_ = std::move(name);
  in.bytes_ = std::move(data);
  return in;
}

ImageInput ImageInput::pixels(const PixelView& view, std::string name) {
  ImageInput in;
  in.kind_ = Kind::kPixels;
  in.name_ = std::move(name);
  try {
    in.pixels_ = to_bgr8(view, in.name_);
  } catch (const Error& e) {
    in.invalid_ = e.what();
  }
  return in;
}

std::vector<ImageInput> file_inputs(const std::vector<std::string>& args) {
  std::vector<ImageInput> out;
  for (auto& p : expand_inputs(args)) out.push_back(ImageInput::file(std::move(p)));
  return out;
}

const char* status_name(InputStatus s) {
  switch (s) {
    case InputStatus::kOk:
      return "ok";
    case InputStatus::kUnreadable:
      return "unreadable";
    case InputStatus::kUndecodable:
      return "undecodable";
    case InputStatus::kBusy:
      return "busy";
    case InputStatus::kFailed:
      return "failed";
  }
  return "?";
}

namespace {

// An input that could not be used: the status to report and the message.
struct InputError {
  InputStatus status;
  std::string message;
};

struct Request {
  ImageInput input;
  RequestOptions opt;
  std::promise<ImageResult> promise;
  std::function<void(ImageResult)> done;  // set: called instead of the promise
  ImageResult result;
  int views = 1;                          // chips per face
  int64_t chips = 0;                      // faces * views
  std::vector<float> in_f32;              // chips x per_image floats (forward path)
  std::vector<uint8_t> in_u8;             // chips x H x W x 3 BGR (staged path)
  std::vector<float> out;                 // chips x dim, filled by the batcher
  int64_t pending = 0;                    // chips not yet encoded (batcher thread only)
};
using RequestPtr = std::shared_ptr<Request>;

struct ChipRef {
  RequestPtr req;
  int64_t index = 0;  // chip within the request
};

}  // namespace

struct Pipeline::Impl {
  PipelineOptions opt;
  Model model;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<StagedEncoder> staged;  // null: float batches through forward()
  InputSpec spec;
  int64_t per_image = 0, image_bytes = 0, dim = 0;
  bool normalised = false;

  std::mutex faces_mu;
  std::unique_ptr<FaceModels> faces;  // loaded by the first request that detects

  mutable std::mutex mu;
  std::condition_variable work_cv, batch_cv, space_cv;
  std::deque<RequestPtr> prep;
  std::deque<ChipRef> chips;
  Clock::time_point first_chip;
  int preparing = 0;  // requests queued for a worker or being prepared
  int in_flight = 0;
  int bulk_runs = 0;  // run() calls active: batches wait to be full rather than max_delay
  bool stopping = false;
  std::shared_ptr<Identifier> gallery;
  PipelineStats stats;
  std::vector<std::thread> workers;
  std::thread batcher;

  Impl(Model m, std::unique_ptr<Backend> given, const PipelineOptions& o)
      : opt(o), model(std::move(m)), backend(std::move(given)) {
    if (opt.max_batch < 1) fail("max_batch must be >= 1 (got ", opt.max_batch, ")");
    if (opt.max_queue < 1) fail("max_queue must be >= 1 (got ", opt.max_queue, ")");
    if (!(opt.max_delay_ms >= 0)) fail("max_delay_ms must be >= 0 (got ", opt.max_delay_ms, ")");
    if (opt.workers < 0) fail("workers must be >= 0 (got ", opt.workers, ")");
    if (!model.graph.nodes.empty()) {  // else detection only
      if (!backend) backend = make_backend(model, opt.backend);
      spec = input_spec(model.graph);
      per_image = element_count(model.graph.input_shape);
      image_bytes = int64_t{3} * spec.height * spec.width;
      dim = model.embedding_dim();
      normalised = model.graph.nodes.back().op == OpType::kL2Norm;
      staged = backend->make_staged_encoder(2, opt.max_batch);
    }
    stats.batch_sizes.assign(opt.max_batch + 1, 0);
    const int n = opt.workers ? opt.workers
                              : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
    for (int i = 0; i < n; ++i) workers.emplace_back([this] { work(); });
    batcher = std::thread([this] { batch_loop(); });
  }

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
    }
    work_cv.notify_all();
    batch_cv.notify_all();
    for (auto& t : workers) t.join();
    batcher.join();
  }

  double threshold_of(const RequestOptions& o) const {
    return o.threshold >= 0 ? o.threshold
                            : model.graph.preprocess.value("threshold", kDefaultThreshold);
  }

  // ---- submission ---------------------------------------------------------------------------
  // Queues `r`, or completes it as kBusy when `wait` is false and the queue is full.
  void enqueue(RequestPtr r, bool wait) {
    {
      std::unique_lock<std::mutex> lock(mu);
      if (stopping) fail("pipeline: submit after shutdown began");
      ++stats.requests;
      if (in_flight >= opt.max_queue) {
        if (!wait) {
          ++stats.busy;
          lock.unlock();
          r->result.name = r->input.name();
          r->result.status = InputStatus::kBusy;
          r->result.error = r->input.name() + ": pipeline busy (" + std::to_string(opt.max_queue) +
                            " requests in flight); try again later";
          deliver(*r);
          return;
        }
        space_cv.wait(lock, [&] { return in_flight < opt.max_queue; });
      }
      ++in_flight;
      ++preparing;
      prep.push_back(std::move(r));
    }
    work_cv.notify_one();
  }

  // Hands the result to its future or callback, then frees its place in the queue.
  void complete(Request& r) {
    deliver(r);
    {
      std::lock_guard<std::mutex> lock(mu);
      --in_flight;
    }
    space_cv.notify_all();
  }

  static void deliver(Request& r) {
    if (r.done)
      r.done(std::move(r.result));
    else
      r.promise.set_value(std::move(r.result));
  }

  // ---- preparation (worker threads) -------------------------------------------------------
  void work() {
    for (;;) {
      RequestPtr r;
      {
        std::unique_lock<std::mutex> lock(mu);
        work_cv.wait(lock, [&] { return stopping || !prep.empty(); });
        if (prep.empty()) return;  // stopping, nothing left
        r = std::move(prep.front());
        prep.pop_front();
      }
      try {
        prepare(*r);
      } catch (const InputError& e) {
        fail_request(*r, e.status, e.message);
      } catch (const std::exception& e) {
        fail_request(*r, InputStatus::kFailed, r->input.name() + ": " + e.what());
      }
      bool encode = false;
      {
        std::lock_guard<std::mutex> lock(mu);
        --preparing;
        if (r->chips > 0 && r->result.ok()) {
          if (chips.empty()) first_chip = Clock::now();
          for (int64_t i = 0; i < r->chips; ++i) chips.push_back({r, i});
          encode = true;
        }
      }
      batch_cv.notify_one();  // a batch may be ready, or nothing more is being prepared
      if (!encode) complete(*r);
    }
  }

  static void fail_request(Request& r, InputStatus s, std::string message) {
    r.result.status = s;
    r.result.error = std::move(message);
    r.result.faces.clear();
    r.chips = 0;
  }

  Bgr8Image decode(ImageInput& in) const {
    if (in.kind_ == ImageInput::Kind::kPixels) {
      if (!in.invalid_.empty()) throw InputError{InputStatus::kUndecodable, in.invalid_};
      return std::move(in.pixels_);
    }
    std::vector<uint8_t> bytes;
    if (in.kind_ == ImageInput::Kind::kFile) {
      try {
        bytes = read_file_bytes(in.path_);
      } catch (const Error& e) {
        throw InputError{InputStatus::kUnreadable, e.what()};
      }
    }
    try {
      return decode_bgr8(in.kind_ == ImageInput::Kind::kFile ? bytes : in.bytes_, in.name_);
    } catch (const Error& e) {
      throw InputError{InputStatus::kUndecodable, e.what()};
    }
  }

#ifdef FACENET_HAS_DLIB
  const FaceModels& face_models() {
    std::lock_guard<std::mutex> lock(faces_mu);
    if (!faces)
      faces = std::make_unique<FaceModels>(opt.dlib_models.empty() ? default_dlib_models_dir()
                                                                   : opt.dlib_models);
    return *faces;
  }
#endif

  void prepare(Request& r) {
    ImageResult& res = r.result;
    res.name = r.input.name();
    if (r.opt.task != Task::kDetect && !backend)
      throw InputError{InputStatus::kFailed,
                       res.name + ": this pipeline has no model (detection only)"};
    const Bgr8Image img = decode(r.input);
    r.input = ImageInput();  // the encoded bytes are no longer needed
    res.width = img.width;
    res.height = img.height;
    const FaceOptions& fo = r.opt.faces;
    std::vector<std::vector<Bgr8Image>> chips;  // per face
    if (fo.detector == DetectorKind::kNone) {
      FaceResult f;
      f.face.box = {0, 0, img.width - 1, img.height - 1};
      res.faces.push_back(std::move(f));
      if (r.opt.task != Task::kDetect) chips.push_back({img});
    } else {
#ifndef FACENET_HAS_DLIB
      throw InputError{InputStatus::kFailed,
                       res.name + ": this build has no face detection (built without dlib)"};
#else
      FoundFaces found = find_faces(face_models(), img, fo);
      res.off_centre_seen = found.off_centre_seen;
      for (auto& f : found.faces) {
        FaceResult fr;
        fr.face = std::move(f.face);
        fr.fallback = f.fallback;
        fr.cnn = f.cnn;
        res.faces.push_back(std::move(fr));
      }
      if (r.opt.task != Task::kDetect && !res.faces.empty()) {
        const Alignment a = model_alignment(model.graph);
        const std::string base = fs::path(res.name).filename().string();
        for (size_t i = 0; i < res.faces.size(); ++i)
          chips.push_back(
              face_chips(img, res.faces[i].face, a, fo, base + "#" + std::to_string(i)));
      }
#endif
    }
    if (r.opt.task == Task::kDetect) return;
    if (r.opt.task == Task::kAlign) {
      for (size_t i = 0; i < chips.size(); ++i) res.faces[i].chips = std::move(chips[i]);
      return;
    }
    r.views = fo.detector == DetectorKind::kNone ? 1 : views_per_face(fo);
    r.chips = static_cast<int64_t>(chips.size()) * r.views;
    int64_t k = 0;
    if (staged)
      r.in_u8.resize(r.chips * image_bytes);
    else
      r.in_f32.resize(r.chips * per_image);
    for (const auto& face_chips : chips) {
      for (const Bgr8Image& c : face_chips) {
        if (staged) {
          const Bgr8Image sized = c.height == spec.height && c.width == spec.width
                                      ? c
                                      : resize_bilinear(c, spec.height, spec.width);
          std::memcpy(r.in_u8.data() + k * image_bytes, sized.pixels.data(), image_bytes);
        } else {
          bgr8_to_input(c.pixels.data(), c.height, c.width, spec, r.in_f32.data() + k * per_image);
        }
        ++k;
      }
    }
    FN_ASSERT(k == r.chips);
    r.out.resize(r.chips * dim);
    r.pending = r.chips;
  }

  // ---- batching (the batcher thread) ------------------------------------------------------
  // The next batch: blocks until one is ready unless `block` is false. Empty: nothing ready
  // (block false), or shutting down with nothing left.
  std::vector<ChipRef> take_batch(bool block) {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      const bool full = static_cast<int64_t>(chips.size()) >= opt.max_batch;
      const auto deadline =
          first_chip + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double, std::milli>(opt.max_delay_ms));
      const bool some = !chips.empty();
      const bool ready = full || (some && (preparing == 0 || stopping ||
                                           (bulk_runs == 0 && Clock::now() >= deadline)));
      if (ready) break;
      if (!block || (stopping && !some && preparing == 0)) return {};
      if (some && bulk_runs == 0)
        batch_cv.wait_until(lock, deadline);
      else
        batch_cv.wait(lock);
    }
    const int64_t n = std::min<int64_t>(opt.max_batch, chips.size());
    std::vector<ChipRef> batch(std::make_move_iterator(chips.begin()),
                               std::make_move_iterator(chips.begin() + n));
    chips.erase(chips.begin(), chips.begin() + n);
    if (!chips.empty()) first_chip = Clock::now();
    ++stats.batches;
    stats.chips += n;
    ++stats.batch_sizes[n];
    return batch;
  }

  void batch_loop() {
    if (staged) return staged_loop();
    std::vector<float> input(per_image * opt.max_batch), output(dim * opt.max_batch);
    for (;;) {
      std::vector<ChipRef> batch = take_batch(true);
      if (batch.empty()) return;
      const int64_t n = static_cast<int64_t>(batch.size());
      for (int64_t i = 0; i < n; ++i)
        std::memcpy(input.data() + i * per_image,
                    batch[i].req->in_f32.data() + batch[i].index * per_image,
                    per_image * sizeof(float));
      try {
        backend->forward(input.data(), n, output.data());
      } catch (const std::exception& e) {
        fail_batch(batch, e.what());
        continue;
      }
      scatter(batch, output.data());
    }
  }

  // Two slots: batch k is copied into slot k % 2 and submitted while the device still runs
  // batch k - 1, which is delivered before its slot is refilled or when no batch is ready.
  void staged_loop() {
    std::vector<ChipRef> in_slot[2];
    int next = 0;
    auto deliver_slot = [&](int s) {
      if (in_slot[s].empty()) return;
      try {
        staged->wait(s);
        scatter(in_slot[s], staged->output(s));
      } catch (const std::exception& e) {
        fail_batch(in_slot[s], e.what());
      }
      in_slot[s].clear();
    };
    for (;;) {
      const int other = 1 - next;
      // With a batch on the device, do not block: when nothing is ready, deliver what is in
      // flight (the older slot first) instead of leaving its requests waiting.
      const bool busy = !in_slot[0].empty() || !in_slot[1].empty();
      std::vector<ChipRef> batch = take_batch(!busy);
      if (batch.empty()) {
        if (!busy) return;  // shutting down, nothing in flight
        deliver_slot(next);
        deliver_slot(other);
        continue;
      }
      deliver_slot(next);
      uint8_t* dst = staged->input(next);
      for (size_t i = 0; i < batch.size(); ++i)
        std::memcpy(dst + i * image_bytes, batch[i].req->in_u8.data() + batch[i].index * image_bytes,
                    image_bytes);
      try {
        staged->submit(next, static_cast<int64_t>(batch.size()));
      } catch (const std::exception& e) {
        fail_batch(batch, e.what());
        continue;
      }
      in_slot[next] = std::move(batch);
      next = other;
    }
  }

  void fail_batch(const std::vector<ChipRef>& batch, const std::string& why) {
    for (const ChipRef& c : batch) {
      Request& r = *c.req;
      if (r.result.ok())
        fail_request(r, InputStatus::kFailed, r.result.name + ": encoding failed: " + why);
      if (--r.pending == 0) complete(r);
    }
  }

  void scatter(const std::vector<ChipRef>& batch, const float* out) {
    for (size_t i = 0; i < batch.size(); ++i) {
      Request& r = *batch[i].req;
      std::memcpy(r.out.data() + batch[i].index * dim, out + i * dim, dim * sizeof(float));
      if (--r.pending == 0) finish(r);
    }
  }

  // All chips of `r` are encoded (or it failed): embeddings per face, the search, completion.
  void finish(Request& r) {
    if (r.result.ok()) {
      try {
        embed(r);
        if (r.opt.task == Task::kIdentify) identify(r);
      } catch (const std::exception& e) {
        fail_request(r, InputStatus::kFailed, r.result.name + ": " + e.what());
      }
    }
    r.in_f32 = {};
    r.in_u8 = {};
    r.out = {};
    complete(r);
  }

  // A face's embedding is the mean of its chips' (one unless mirrored or jittered), re-normalised
  // when the model ends in an L2 normalisation.
  void embed(Request& r) const {
    const int views = r.views;
    for (size_t f = 0; f < r.result.faces.size(); ++f) {
      std::vector<float>& e = r.result.faces[f].embedding;
      e.assign(dim, 0.f);
      for (int v = 0; v < views; ++v) {
        const float* row = r.out.data() + (f * views + v) * dim;
        for (int64_t j = 0; j < dim; ++j) e[j] += row[j] / views;
      }
      if (views > 1 && normalised) {
        double ss = 0;
        for (float x : e) ss += static_cast<double>(x) * x;
        if (ss > 0)
          for (auto& x : e) x = static_cast<float>(x / std::sqrt(ss));
      }
    }
  }

  void identify(Request& r) {
    std::shared_ptr<Identifier> g;
    {
      std::lock_guard<std::mutex> lock(mu);
      g = gallery;
    }
    if (!g) fail("identify: the pipeline has no gallery (set_gallery)");
    if (r.result.faces.empty()) return;
    std::vector<float> probes;
    for (const auto& f : r.result.faces)
      probes.insert(probes.end(), f.embedding.begin(), f.embedding.end());
    auto found = g->identify(probes.data(), static_cast<int64_t>(r.result.faces.size()), r.opt.k,
                             threshold_of(r.opt));
    for (size_t f = 0; f < found.size(); ++f) r.result.faces[f].match = std::move(found[f]);
  }
};

Pipeline::Pipeline(const fs::path& model_file, const PipelineOptions& options)
    : Pipeline(load_model(model_file), options) {}

Pipeline::Pipeline(Model model, const PipelineOptions& options)
    : impl_(std::make_unique<Impl>(std::move(model), nullptr, options)) {}

Pipeline::Pipeline(Model model, std::unique_ptr<Backend> backend, const PipelineOptions& options)
    : impl_(std::make_unique<Impl>(std::move(model), std::move(backend), options)) {
  if (!impl_->backend) fail("Pipeline: no backend given");
}

Pipeline::~Pipeline() = default;

const Model& Pipeline::model() const {
  return impl_->model;
}
const PipelineOptions& Pipeline::options() const {
  return impl_->opt;
}
EmbeddingSpec Pipeline::spec() const {
  return embedding_spec(impl_->model);
}
int64_t Pipeline::dim() const {
  return impl_->dim;
}
std::string Pipeline::backend_name() const {
  return impl_->backend ? impl_->backend->name() : "none (detection only)";
}
double Pipeline::default_threshold() const {
  return impl_->threshold_of(RequestOptions{});
}

std::future<ImageResult> Pipeline::submit(ImageInput input) {
  return submit(std::move(input), impl_->opt.defaults);
}

std::future<ImageResult> Pipeline::submit(ImageInput input, const RequestOptions& options) {
  auto r = std::make_shared<Request>();
  r->input = std::move(input);
  r->opt = options;
  std::future<ImageResult> f = r->promise.get_future();
  impl_->enqueue(std::move(r), false);
  return f;
}

void Pipeline::submit(ImageInput input, const RequestOptions& options,
                      std::function<void(ImageResult)> done) {
  if (!done) fail("Pipeline::submit: no callback given");
  auto r = std::make_shared<Request>();
  r->input = std::move(input);
  r->opt = options;
  r->done = std::move(done);
  impl_->enqueue(std::move(r), false);
}

void Pipeline::run(std::vector<ImageInput> inputs, const RequestOptions& options,
                   const std::function<void(ImageResult&)>& on_result,
                   const std::function<void(size_t, size_t)>& on_progress) {
  struct BulkGuard {
    Impl& p;
    explicit BulkGuard(Impl& i) : p(i) {
      std::lock_guard<std::mutex> lock(p.mu);
      ++p.bulk_runs;
    }
    ~BulkGuard() {
      {
        std::lock_guard<std::mutex> lock(p.mu);
        --p.bulk_runs;
      }
      p.batch_cv.notify_all();
    }
  } guard(*impl_);
  const size_t total = inputs.size();
  std::deque<std::future<ImageResult>> pending;
  size_t done = 0;
  auto take_front = [&] {
    ImageResult r = pending.front().get();
    pending.pop_front();
    if (on_result) on_result(r);
    if (on_progress) on_progress(++done, total);
  };
  for (auto& in : inputs) {
    auto r = std::make_shared<Request>();
    r->input = std::move(in);
    r->opt = options;
    pending.push_back(r->promise.get_future());
    impl_->enqueue(std::move(r), true);
    // Hand over what is finished, in order, so results never pile up.
    while (!pending.empty() &&
           pending.front().wait_for(std::chrono::seconds(0)) == std::future_status::ready)
      take_front();
  }
  while (!pending.empty()) take_front();
}

std::vector<ImageResult> Pipeline::run(std::vector<ImageInput> inputs,
                                       const RequestOptions& options) {
  std::vector<ImageResult> out;
  out.reserve(inputs.size());
  run(std::move(inputs), options, [&](ImageResult& r) { out.push_back(std::move(r)); });
  return out;
}

void Pipeline::set_gallery(GalleryMatrix gallery, std::optional<CpuStorage> storage) {
  if (!impl_->backend) fail("set_gallery: this pipeline has no model (detection only)");
  auto g = std::make_shared<Identifier>(std::move(gallery), impl_->opt.backend.device, storage,
                                        impl_->backend->gpu_context());
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->gallery = std::move(g);
}

int64_t Pipeline::gallery_rows() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->gallery ? static_cast<int64_t>(impl_->gallery->rows()) : 0;
}

PipelineStats Pipeline::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  PipelineStats s = impl_->stats;
  s.in_flight = impl_->in_flight;
  return s;
}

}  // namespace facenet
