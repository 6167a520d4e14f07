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

#include "engine/pipeline/request.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "engine/core/error.h"
#include "engine/image/image_decode.h"
#include "engine/image/image_io.h"

namespace facenet {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// PipelineOptions::max_delay_ms when left automatic (see pipeline.h).
constexpr double kCpuDelayMs = 10, kGpuDelayMs = 2;

struct Pipeline::Impl {
  PipelineOptions opt;
  Model model;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<StagedEncoder> staged;  // null: float batches through forward()
  InputSpec spec;
  int64_t per_image = 0, image_bytes = 0, dim = 0;
  bool normalised = false;

#ifdef FACENET_HAS_DLIB
  std::mutex faces_mu;
  std::unique_ptr<FaceModels> faces;  // loaded by the first request that detects
#endif

  mutable std::mutex mu;
  std::condition_variable work_cv, batch_cv, space_cv;
  std::deque<RequestPtr> prep;
  std::deque<RequestPtr> busy_replies;  // kBusy results for callbacks, handed over by a worker
  // Prepared requests with chips not yet batched, in submission order: batches take chips in
  // that order, so the same inputs make the same batches (and the same bits) run after run.
  struct Queued {
    RequestPtr req;
    int64_t next = 0;         // its first chip not yet batched
    Clock::time_point since;  // when it was prepared
  };
  std::map<uint64_t, Queued> queued;
  int64_t queued_chips = 0;
  std::set<uint64_t> in_prep;  // requests queued for a worker or being prepared
  uint64_t next_seq = 0;
  int in_flight = 0;
  int bulk_runs = 0;      // run() calls active: batches wait to be full rather than max_delay
  int64_t announced = 0;  // inputs run() has yet to submit: more chips are coming
  bool stopping = false;
  std::shared_ptr<Identifier> gallery;
  // Held by whoever queues work on the backend's stream: the batcher, and set_gallery() while
  // it builds a GPU index on the same context (its uploads must not land in a graph capture).
  std::mutex device_mu;
  PipelineStats stats;
  std::vector<std::thread> workers;
  std::thread batcher;

  Impl(Model m, std::unique_ptr<Backend> given, const PipelineOptions& o)
      : opt(o), model(std::move(m)), backend(std::move(given)) {
    if (opt.max_batch < 1) fail("max_batch must be >= 1 (got ", opt.max_batch, ")");
    if (opt.max_queue < 1) fail("max_queue must be >= 1 (got ", opt.max_queue, ")");
    if (!(opt.max_delay_ms <= 60000))
      fail("max_delay_ms must be at most 60000 (got ", opt.max_delay_ms, ")");
    if (opt.max_batch > 65536) fail("max_batch must be at most 65536 (got ", opt.max_batch, ")");
    if (opt.max_delay_ms < 0)
      opt.max_delay_ms = opt.backend.device == Device::kCuda ? kGpuDelayMs : kCpuDelayMs;
    if (opt.workers < 0) fail("workers must be >= 0 (got ", opt.workers, ")");
    if (!model.graph.nodes.empty()) {  // else detection only
      if (is_detector_model(model))
        fail("model ", model.graph.name,
             " is a face detector, not an encoder (the CNN detector, --detector cnn, reads "
             "mmod_human_face_detector.dat itself)");
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
  int run_limit() const {
    return std::max(1, opt.max_queue - opt.max_queue / 4);
  }

  // Queues `r`, or completes it as kBusy when `wait` is false and the queue is full.
  // `announced_by_run`: the request was counted in `announced` by run().
  void enqueue(RequestPtr r, bool wait, bool announced_by_run = false) {
    {
      std::unique_lock<std::mutex> lock(mu);
      if (announced_by_run) --announced;
      if (stopping) fail("pipeline: submit after shutdown began");
      ++stats.requests;
      // run() fills at most three quarters of the queue, so a submit() alongside it still
      // finds room instead of kBusy.
      const int limit = wait ? run_limit() : opt.max_queue;
      if (in_flight >= limit) {
        if (!wait) {
          ++stats.busy;
          lock.unlock();
          r->result.name = r->input.name();
          r->result.status = InputStatus::kBusy;
          r->result.error = r->input.name() + ": pipeline busy (" + std::to_string(opt.max_queue) +
                            " requests in flight); try again later";
          if (!r->done) return deliver(*r);  // a future: ready at once
          // A callback runs on a pipeline thread, as for every other result, so a caller
          // holding a lock its callback takes cannot deadlock when the queue is full.
          lock.lock();
          busy_replies.push_back(std::move(r));
          lock.unlock();
          work_cv.notify_one();
          return;
        }
        space_cv.wait(lock, [&] { return in_flight < limit; });
      }
      ++in_flight;
      r->seq = next_seq++;
      in_prep.insert(r->seq);
      prep.push_back(std::move(r));
    }
    work_cv.notify_one();
  }

  // Hands the result to its future or callback, then frees its place in the queue.
  // The place is freed first, so a caller that submits again from its result (or a callback)
  // finds it free.
  void complete(Request& r) {
    {
      std::lock_guard<std::mutex> lock(mu);
      --in_flight;
    }
    space_cv.notify_all();
    deliver(r);
  }

  // An exception from a callback is the caller's and is dropped here: it must not stop a
  // pipeline thread, nor fail the requests that share its batch.
  static void deliver(Request& r) {
    if (!r.done) return r.promise.set_value(std::move(r.result));
    try {
      r.done(std::move(r.result));
    } catch (...) {
    }
  }

  // ---- preparation (worker threads) -------------------------------------------------------
  void work() {
    for (;;) {
      RequestPtr r;
      {
        std::unique_lock<std::mutex> lock(mu);
        work_cv.wait(lock, [&] { return stopping || !prep.empty() || !busy_replies.empty(); });
        if (!busy_replies.empty()) {
          r = std::move(busy_replies.front());
          busy_replies.pop_front();
          lock.unlock();
          deliver(*r);
          continue;
        }
        if (prep.empty()) return;  // stopping, nothing left
        r = std::move(prep.front());
        prep.pop_front();
      }
      try {
        prepare(*r);
      } catch (const InputError& e) {
        fail_request(*r, e.status, e.message);
      } catch (const std::exception& e) {
        const std::string& name = r->result.name.empty() ? r->input.name() : r->result.name;
        fail_request(*r, InputStatus::kFailed, name + ": " + e.what());
      }
      bool encode = false;
      {
        std::lock_guard<std::mutex> lock(mu);
        in_prep.erase(r->seq);
        if (r->chips > 0 && r->result.ok()) {
          queued_chips += r->chips;
          queued.emplace(r->seq, Queued{r, 0, Clock::now()});
          encode = true;
        }
      }
      batch_cv.notify_one();  // a batch may be ready, or nothing more is being prepared
      if (!encode) complete(*r);
    }
  }

#ifdef FACENET_HAS_DLIB
  const FaceModels& face_models() {
    std::lock_guard<std::mutex> lock(faces_mu);
    if (!faces) {
      // The CNN detector runs in float32 on the encoder's device (the CPU backend when the
      // encoder is the reference one: that is the oracle for tests, too slow for photos).
      CnnDetectorOptions cnn;
      cnn.backend.device = opt.backend.device == Device::kCuda ? Device::kCuda : Device::kCpu;
      cnn.backend.threads = opt.backend.threads;
      faces = std::make_unique<FaceModels>(
          opt.dlib_models.empty() ? default_dlib_models_dir() : opt.dlib_models, cnn);
    }
    return *faces;
  }
#endif

  void prepare(Request& r) {
    if (r.opt.task != Task::kDetect && !backend)
      throw InputError{InputStatus::kFailed,
                       r.input.name() + ": this pipeline has no model (detection only)"};
    ChipLayout layout{&model.graph, spec, per_image, image_bytes, dim, staged != nullptr};
#ifdef FACENET_HAS_DLIB
    prepare_request(r, layout, [this]() -> const FaceModels& { return face_models(); });
#else
    prepare_request(r, layout, nullptr);
#endif
  }

  // ---- batching (the batcher thread) ------------------------------------------------------
  // The next batch: blocks until one is ready unless `block` is false. Empty: nothing ready
  // (block false), or shutting down with nothing left.
  //
  // Ready: max_batch chips are queued; or some are and nothing more is coming (no request
  // being prepared, none announced by run()); or the oldest has waited max_delay_ms. While a
  // run() is active latency does not matter: only the chips of requests older than every
  // request still being prepared count towards a full batch (so batches are the same whatever
  // the workers' timing), and max_delay_ms does not apply; a full queue also makes a batch
  // ready, so run()'s backpressure can never wait on the batcher.
  std::vector<ChipRef> take_batch(bool block) {
    std::unique_lock<std::mutex> lock(mu);
    const auto delay = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double, std::milli>(opt.max_delay_ms));
    bool any_order = true;  // take from every queued request, not only the settled prefix
    for (;;) {
      const uint64_t bound = in_prep.empty() ? UINT64_MAX : *in_prep.begin();
      int64_t settled = 0;
      // The oldest request submit() made (run()'s requests have no deadline).
      Clock::time_point oldest = Clock::time_point::max();
      for (const auto& [seq, q] : queued) {
        if (seq < bound) settled += q.req->chips - q.next;
        if (!q.req->bulk) oldest = std::min(oldest, q.since);
      }
      const bool some = queued_chips > 0;
      const bool coming = !in_prep.empty() || announced > 0;
      const bool flush = some && (!coming || stopping);
      const bool due = oldest != Clock::time_point::max() && Clock::now() >= oldest + delay;
      bool ready;
      if (bulk_runs > 0) {
        const bool jammed = some && in_flight >= run_limit();  // run() waits for room
        ready = settled >= opt.max_batch || flush || jammed || due;
        any_order = flush || due || (jammed && settled < opt.max_batch);
      } else {
        ready = queued_chips >= opt.max_batch || flush || due;
        any_order = true;
      }
      if (ready) break;
      if (!block || (stopping && !some && !coming)) return {};
      if (oldest != Clock::time_point::max())
        batch_cv.wait_until(lock, oldest + delay);
      else
        batch_cv.wait(lock);
    }
    const uint64_t bound = any_order || in_prep.empty() ? UINT64_MAX : *in_prep.begin();
    std::vector<ChipRef> batch;
    // Two passes in submission order: submit()'s requests first (they are the ones with a
    // deadline), then run()'s.
    for (const bool bulk_pass : {false, true}) {
      for (auto it = queued.begin(); it != queued.end() && it->first < bound &&
                                     static_cast<int64_t>(batch.size()) < opt.max_batch;) {
        Queued& q = it->second;
        if (q.req->bulk != bulk_pass) {
          ++it;
          continue;
        }
        while (q.next < q.req->chips && static_cast<int64_t>(batch.size()) < opt.max_batch)
          batch.push_back({q.req, q.next++});
        if (q.next == q.req->chips)
          it = queued.erase(it);
        else
          ++it;
      }
    }
    const int64_t n = static_cast<int64_t>(batch.size());
    FN_ASSERT(n > 0);  // ready means some chip can be taken
    queued_chips -= n;
    ++stats.batches;
    stats.chips += n;
    ++stats.batch_sizes[n];
    return batch;
  }

  void batch_loop() {
    if (staged) return staged_loop();
    // Sized by the batches that come, not by max_batch: memory follows the work given.
    std::vector<float> input, output;
    for (;;) {
      std::vector<ChipRef> batch = take_batch(true);
      if (batch.empty()) return;
      const int64_t n = static_cast<int64_t>(batch.size());
      if (static_cast<int64_t>(input.size()) < n * per_image) {
        input.resize(n * per_image);
        output.resize(n * dim);
      }
      for (int64_t i = 0; i < n; ++i)
        std::memcpy(input.data() + i * per_image,
                    batch[i].req->in_f32.data() + batch[i].index * per_image,
                    per_image * sizeof(float));
      try {
        std::lock_guard<std::mutex> device(device_mu);
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
      bool ok = true;
      try {
        std::lock_guard<std::mutex> device(device_mu);
        staged->wait(s);
        identify_on_device(in_slot[s], staged->device_output(s));
      } catch (const std::exception& e) {
        fail_batch(in_slot[s], e.what());
        ok = false;
      }
      if (ok) scatter(in_slot[s], staged->output(s));
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
        std::memcpy(dst + i * image_bytes,
                    batch[i].req->in_u8.data() + batch[i].index * image_bytes, image_bytes);
      try {
        std::lock_guard<std::mutex> device(device_mu);
        staged->submit(next, static_cast<int64_t>(batch.size()));
      } catch (const std::exception& e) {
        fail_batch(batch, e.what());
        continue;
      }
      in_slot[next] = std::move(batch);
      next = other;
    }
  }

  // kIdentify requests whose every chip is in this batch, one chip per face, are searched on
  // the GPU from the slot's device embeddings: no device -> host -> device hop. The others
  // (mirror/jitter average on the host; a request split over two batches) search from the
  // host in finish().
  void identify_on_device(const std::vector<ChipRef>& batch, const float* device_rows) {
    if (!device_rows) return;
    std::shared_ptr<Identifier> g;
    {
      std::lock_guard<std::mutex> lock(mu);
      g = gallery;
    }
    if (!g || !g->on_gpu()) return;
    std::map<Request*, std::vector<int64_t>> rows;  // request -> its chips' batch rows
    for (size_t i = 0; i < batch.size(); ++i) {
      Request& r = *batch[i].req;
      if (r.opt.task == Task::kIdentify && r.views == 1 && r.result.ok())
        rows[&r].push_back(static_cast<int64_t>(i));
    }
    for (auto& [r, pick] : rows) {
      if (static_cast<int64_t>(pick.size()) != r->chips) continue;  // split over batches
      try {
        auto found = g->identify_device(device_rows, pick, r->opt.k, threshold_of(r->opt));
        for (size_t f = 0; f < found.size(); ++f) r->result.faces[f].match = std::move(found[f]);
        r->matched = true;
      } catch (const std::exception&) {
        // finish() searches from the host and reports the failure against this request only
      }
    }
  }

  // The batch's requests fail. A request with chips still queued (split over batches) gives
  // them up at once, so nothing of it is left for a later batch to wait on.
  void fail_batch(const std::vector<ChipRef>& batch, const std::string& why) {
    for (const ChipRef& c : batch) {
      Request& r = *c.req;
      if (r.result.ok()) {
        r.result.status = InputStatus::kFailed;
        r.result.error = r.result.name + ": encoding failed: " + why;
        r.result.faces.clear();
        std::lock_guard<std::mutex> lock(mu);
        if (auto it = queued.find(r.seq); it != queued.end()) {
          const int64_t left = r.chips - it->second.next;
          queued_chips -= left;
          r.pending -= left;
          queued.erase(it);
        }
      }
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
        embed_faces(r, dim, normalised);
        if (r.opt.task == Task::kIdentify && !r.matched) identify(r);
      } catch (const std::exception& e) {
        fail_request(r, InputStatus::kFailed, r.result.name + ": " + e.what());
      }
    }
    r.in_f32 = {};
    r.in_u8 = {};
    r.out = {};
    complete(r);
  }

  void identify(Request& r) {
    std::shared_ptr<Identifier> g;
    {
      std::lock_guard<std::mutex> lock(mu);
      g = gallery;
    }
    if (!g) fail("identify: the pipeline has no gallery (set_gallery)");
    if (r.result.faces.empty()) return;
    std::unique_lock<std::mutex> device(device_mu, std::defer_lock);
    if (g->on_gpu()) device.lock();  // the search runs on the backend's stream
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
  // While run() is active, batches wait to be full (or for nothing more to come), and the
  // inputs not yet submitted count as coming, so a batch never closes early because the
  // workers overtook this thread.
  struct BulkGuard {
    Impl& p;
    int64_t left;
    BulkGuard(Impl& i, int64_t n) : p(i), left(n) {
      std::lock_guard<std::mutex> lock(p.mu);
      ++p.bulk_runs;
      p.announced += n;
    }
    ~BulkGuard() {
      {
        std::lock_guard<std::mutex> lock(p.mu);
        --p.bulk_runs;
        p.announced -= left;  // an exception stopped the submissions early
      }
      p.batch_cv.notify_all();
    }
  } guard(*impl_, static_cast<int64_t>(inputs.size()));
  const size_t total = inputs.size();
  std::deque<std::future<ImageResult>> pending;
  size_t done = 0;
  auto take_front = [&] {
    ImageResult r = pending.front().get();
    pending.pop_front();
    if (on_result) on_result(r);
    if (on_progress) on_progress(++done, total);
  };
  try {
    for (auto& in : inputs) {
      auto r = std::make_shared<Request>();
      r->input = std::move(in);
      r->opt = options;
      r->bulk = true;
      pending.push_back(r->promise.get_future());
      --guard.left;
      impl_->enqueue(std::move(r), true, true);
      // Hand over what is finished, in order, so results never pile up.
      while (!pending.empty() &&
             pending.front().wait_for(std::chrono::seconds(0)) == std::future_status::ready)
        take_front();
    }
    while (!pending.empty()) take_front();
  } catch (...) {
    // A callback threw: the requests already queued still finish before run() returns, so
    // that nothing they read (borrowed pixels) is used after the caller frees it.
    for (auto& f : pending) f.wait();
    throw;
  }
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
  std::shared_ptr<Identifier> g;
  {
    std::unique_lock<std::mutex> device(impl_->device_mu, std::defer_lock);
    if (impl_->backend->gpu_context()) device.lock();
    g = std::make_shared<Identifier>(std::move(gallery), impl_->opt.backend.device, storage,
                                     impl_->backend->gpu_context());
  }
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    std::swap(impl_->gallery, g);
  }
  // The old index (if any) is freed here, outside the lock.
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
