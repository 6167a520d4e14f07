// The front door (engine/pipeline/pipeline.h) end to end on nn4.small2: many threads against a
// single-threaded run, the dynamic batcher's rules, kBusy and run()'s backpressure, one image
// given as a file, bytes or pixels, and the tasks (detect, align, encode, identify). Requests
// that must stay "being prepared" read a named pipe the test holds shut, so the batcher's rules
// are checked without timing.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/image/image_decode.h"
#include "engine/image/image_io.h"
#include "engine/pipeline/pipeline.h"
#include "tests/model_fixture.h"
#include "tests/test_util.h"

namespace facenet {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A safety net only: a correct pipeline answers in well under a second; a broken one must fail
// the test instead of hanging it.
constexpr auto kPatience = 60s;

fs::path aligned_crop(const std::string& name) {
  return test::shared_path("data/openface-examples/images/examples-aligned") / (name + ".png");
}

// Raw LFW photos (250x250, one frontal face each that HOG finds without upsampling).
fs::path lfw_photo(const std::string& person, int number = 1) {
  char file[16];
  std::snprintf(file, sizeof(file), "_%04d.jpg", number);
  return test::shared_path("data/lfw/lfw-deepfunneled") / person / (person + file);
}

RequestOptions crop_options(Task task = Task::kEncode) {
  RequestOptions o;
  o.task = task;
  o.faces.detector = DetectorKind::kNone;
  return o;
}

RequestOptions photo_options(Task task = Task::kEncode) {
  RequestOptions o;
  o.task = task;
  o.faces.detector = DetectorKind::kHog;
  return o;
}

PipelineOptions options(int max_batch = 64, double max_delay_ms = 2.0, int max_queue = 1024,
                        Device device = Device::kCpu) {
  PipelineOptions o;
  o.backend.device = device;
  o.max_batch = max_batch;
  o.max_delay_ms = max_delay_ms;
  o.max_queue = max_queue;
  o.workers = 3;  // more than the cores of a small CI machine: one may be held (HeldFile)
  return o;
}

Pipeline make_pipeline(const PipelineOptions& o = options()) {
  return Pipeline(test::converted_model("openface"), o);
}

std::vector<uint8_t> file_bytes(const fs::path& p) {
  return read_file_bytes(p);
}

// The image decoded as the pipeline decodes it, laid out as a caller might hold it: `order`,
// and `pad` extra bytes (filled with junk) after every row.
struct HeldPixels {
  std::vector<uint8_t> buffer;
  PixelView view;
};
HeldPixels pixels_of(const fs::path& p, PixelOrder order, int pad) {
  const Bgr8Image img = decode_bgr8(file_bytes(p), p.string());
  HeldPixels h;
  const int64_t row = int64_t{3} * img.width, stride = row + pad;
  h.buffer.assign(static_cast<size_t>(stride * img.height), 0xAB);
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x)
      for (int c = 0; c < 3; ++c) {
        const int from = order == PixelOrder::kBgr ? c : 2 - c;
        h.buffer[y * stride + 3 * x + c] = img.pixels[y * row + 3 * x + from];
      }
  h.view = {h.buffer.data(), img.height, img.width, pad ? stride : 0, order};
  return h;
}

int64_t batches_of(const PipelineStats& s, size_t size) {
  return size < s.batch_sizes.size() ? s.batch_sizes[size] : 0;
}
int64_t largest_batch(const PipelineStats& s) {
  for (size_t i = s.batch_sizes.size(); i-- > 0;)
    if (s.batch_sizes[i] > 0) return static_cast<int64_t>(i);
  return 0;
}
int64_t chips_in_batches(const PipelineStats& s) {
  int64_t n = 0;
  for (size_t i = 0; i < s.batch_sizes.size(); ++i) n += static_cast<int64_t>(i) * s.batch_sizes[i];
  return n;
}

// Waits for a future the test expects to complete; fails (instead of hanging) when it does not.
ImageResult get(std::future<ImageResult>& f, const std::string& what) {
  if (f.wait_for(kPatience) != std::future_status::ready) {
    ADD_FAILURE() << what << ": no result after " << kPatience.count() << " s";
    return {};
  }
  return f.get();
}

bool ready(const std::future<ImageResult>& f) {
  return f.wait_for(0s) == std::future_status::ready;
}

void expect_same_embedding(const std::vector<float>& got, const std::vector<float>& want,
                           double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  EXPECT_LE(test::max_abs_diff(got.data(), want.data(), got.size()), tol) << what;
}

void expect_same_box_and_landmarks(const FaceResult& got, const FaceResult& want,
                                   const std::string& what) {
  EXPECT_EQ(got.face.box.left, want.face.box.left) << what;
  EXPECT_EQ(got.face.box.top, want.face.box.top) << what;
  EXPECT_EQ(got.face.box.right, want.face.box.right) << what;
  EXPECT_EQ(got.face.box.bottom, want.face.box.bottom) << what;
  ASSERT_EQ(got.face.landmarks.size(), want.face.landmarks.size()) << what;
  for (size_t i = 0; i < got.face.landmarks.size(); ++i) {
    EXPECT_EQ(got.face.landmarks[i].x, want.face.landmarks[i].x) << what << " landmark " << i;
    EXPECT_EQ(got.face.landmarks[i].y, want.face.landmarks[i].y) << what << " landmark " << i;
  }
}

void expect_same_face(const FaceResult& got, const FaceResult& want, const std::string& what) {
  expect_same_box_and_landmarks(got, want, what);
  ASSERT_EQ(got.chips.size(), want.chips.size()) << what;
  for (size_t i = 0; i < got.chips.size(); ++i)
    EXPECT_TRUE(got.chips[i].pixels == want.chips[i].pixels) << what << " chip " << i;
}

// Same outcome: status, error, size, faces; embeddings within `tol` (batching may reorder sums).
void expect_same_result(const ImageResult& got, const ImageResult& want, double tol,
                        const std::string& what) {
  EXPECT_EQ(got.name, want.name) << what;
  ASSERT_EQ(got.status, want.status) << what << ": " << got.error;
  EXPECT_EQ(got.error, want.error) << what;
  EXPECT_EQ(got.width, want.width) << what;
  EXPECT_EQ(got.height, want.height) << what;
  ASSERT_EQ(got.faces.size(), want.faces.size()) << what;
  for (size_t f = 0; f < got.faces.size(); ++f) {
    const std::string face = what + " face " + std::to_string(f);
    expect_same_face(got.faces[f], want.faces[f], face);
    expect_same_embedding(got.faces[f].embedding, want.faces[f].embedding, tol, face);
  }
}

void expect_unit_embedding(const ImageResult& r, int64_t dim, const std::string& what) {
  ASSERT_TRUE(r.ok()) << what << ": " << r.error;
  ASSERT_FALSE(r.faces.empty()) << what;
  for (const FaceResult& f : r.faces) {
    ASSERT_EQ(static_cast<int64_t>(f.embedding.size()), dim) << what;
    double n2 = 0;
    for (float v : f.embedding) n2 += double(v) * v;
    EXPECT_NEAR(std::sqrt(n2), 1.0, 1e-4) << what;
  }
}

// A named pipe read as an image file: the pipeline worker that opens it stays in the "being
// prepared" state until release() writes `content` and closes it. Releases in its destructor,
// so a failing test never leaves the pipeline's destructor waiting on it.
class HeldFile {
 public:
  HeldFile(fs::path path, std::vector<uint8_t> content)
      : path_(std::move(path)), content_(std::move(content)) {
    if (::mkfifo(path_.c_str(), 0600) != 0)
      fail(path_.string(), ": mkfifo: ", std::strerror(errno));
  }
  ~HeldFile() { release(); }
  HeldFile(const HeldFile&) = delete;
  HeldFile& operator=(const HeldFile&) = delete;

  const fs::path& path() const { return path_; }

  // Returns once a reader (the pipeline's worker) has the pipe open; the write end stays open,
  // so the reader now waits for data.
  void wait_for_reader() {
    const auto deadline = std::chrono::steady_clock::now() + kPatience;
    while (fd_ < 0) {
      fd_ = ::open(path_.c_str(), O_WRONLY | O_NONBLOCK);  // ENXIO: no reader yet
      if (fd_ >= 0) break;
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << path_ << ": the pipeline never opened it";
        ::unlink(path_.c_str());  // a late reader finds no file instead of blocking for ever
        return;
      }
      std::this_thread::sleep_for(1ms);
    }
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_NONBLOCK);
  }

  void release() {
    if (released_) return;
    released_ = true;
    wait_for_reader();
    if (fd_ < 0) return;
    for (size_t done = 0; done < content_.size();) {
      const ssize_t n = ::write(fd_, content_.data() + done, content_.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    ::close(fd_);
    ::unlink(path_.c_str());
  }

 private:
  fs::path path_;
  std::vector<uint8_t> content_;
  int fd_ = -1;
  bool released_ = false;
};

class PipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("facenet-pipeline-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// ---- many threads against one --------------------------------------------------------------

struct Case {
  ImageInput input;
  RequestOptions options;
  InputStatus want;
};

TEST_F(PipelineTest, SixteenThreadsGetTheSingleThreadedResults) {
  FN_REQUIRE_LANDMARK_MODELS();
  std::ofstream(dir_ / "notes.jpg") << "not an image, whatever the extension says";
  std::vector<uint8_t> truncated = file_bytes(aligned_crop("carell"));
  truncated.resize(truncated.size() / 2);
  const HeldPixels lennon = pixels_of(aligned_crop("lennon-1"), PixelOrder::kRgb, 7);
  const PixelView no_data{nullptr, 96, 96, 0, PixelOrder::kBgr};
  const PixelView short_rows{lennon.buffer.data(), 96, 96, 3 * 96 - 1, PixelOrder::kBgr};
  const std::vector<Case> cases = {
      {ImageInput::file(aligned_crop("adams")), crop_options(), InputStatus::kOk},
      {ImageInput::file(dir_ / "missing.png"), crop_options(), InputStatus::kUnreadable},
      {ImageInput::bytes(file_bytes(aligned_crop("carell")), "carell.png"), crop_options(),
       InputStatus::kOk},
      {ImageInput::file(lfw_photo("Aaron_Eckhart")), photo_options(), InputStatus::kOk},
      {ImageInput::file(dir_ / "notes.jpg"), photo_options(), InputStatus::kUndecodable},
      {ImageInput::pixels(lennon.view, "lennon-1 pixels"), crop_options(), InputStatus::kOk},
      {ImageInput::bytes(file_bytes(lfw_photo("Aaron_Peirsol")), "peirsol.jpg"), photo_options(),
       InputStatus::kOk},
      {ImageInput::bytes(truncated, "carell-truncated.png"), crop_options(),
       InputStatus::kUndecodable},
      {ImageInput::pixels(no_data, "no-data view"), crop_options(), InputStatus::kUndecodable},
      {ImageInput::file(lfw_photo("Aaron_Sorkin")), photo_options(), InputStatus::kOk},
      {ImageInput::pixels(short_rows, "short-rows view"), photo_options(),
       InputStatus::kUndecodable},
      {ImageInput::bytes(synthetic_jpeg(120, 160, 7), "no-face.jpg"), photo_options(),
       InputStatus::kOk},
      {ImageInput::bytes({}, "empty upload"), photo_options(), InputStatus::kUndecodable},
      // Borrowed pixels are converted by the worker, so a bad view is reported there.
      {ImageInput::borrowed_pixels(lennon.view, "lennon-1 borrowed"), crop_options(),
       InputStatus::kOk},
      {ImageInput::borrowed_pixels(short_rows, "short-rows borrowed"), crop_options(),
       InputStatus::kUndecodable},
  };
  Pipeline pipe = make_pipeline(options(8));

  std::vector<ImageResult> want;
  int64_t chips = 0;
  for (const Case& c : cases) {
    std::future<ImageResult> f = pipe.submit(c.input, c.options);
    want.push_back(get(f, c.input.name()));
    const ImageResult& r = want.back();
    EXPECT_EQ(r.name, c.input.name());
    EXPECT_EQ(r.status, c.want) << r.name << ": got " << status_name(r.status) << " " << r.error;
    if (c.want == InputStatus::kOk) {
      EXPECT_TRUE(r.error.empty()) << r.name << ": " << r.error;
      if (r.name != "no-face.jpg") expect_unit_embedding(r, pipe.dim(), r.name);
    } else {
      EXPECT_NE(r.error.find(c.input.name()), std::string::npos)
          << "the error does not name the input '" << c.input.name() << "': " << r.error;
      EXPECT_TRUE(r.faces.empty()) << r.name;
    }
    chips += static_cast<int64_t>(r.faces.size());
  }
  EXPECT_TRUE(want[11].faces.empty()) << "a face in a synthetic gradient";

  // 16 threads, each submitting every case (from its own starting point), half of them with a
  // future and half with a callback.
  constexpr int kThreads = 16;
  const size_t n = cases.size();
  std::vector<std::vector<ImageResult>> got(kThreads, std::vector<ImageResult>(n));
  std::mutex mu;
  std::condition_variable cv;
  size_t callbacks = 0, expected_callbacks = 0;
  for (int t = 0; t < kThreads; ++t)
    for (size_t j = 0; j < n; ++j) expected_callbacks += (t + j) % 2;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::vector<std::pair<size_t, std::future<ImageResult>>> futures;
      for (size_t j = 0; j < n; ++j) {
        const size_t i = (t + j) % n;
        if ((t + j) % 2 == 0) {
          futures.emplace_back(i, pipe.submit(cases[i].input, cases[i].options));
          continue;
        }
        pipe.submit(cases[i].input, cases[i].options, [&, t, i](ImageResult r) {
          std::lock_guard<std::mutex> lock(mu);
          got[t][i] = std::move(r);
          ++callbacks;
          cv.notify_all();
        });
      }
      for (auto& [i, f] : futures) {
        ImageResult r = get(f, cases[i].input.name());
        std::lock_guard<std::mutex> lock(mu);
        got[t][i] = std::move(r);
      }
    });
  for (auto& th : threads) th.join();
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, kPatience, [&] { return callbacks == expected_callbacks; }))
        << callbacks << " of " << expected_callbacks << " callbacks came";
  }
  for (int t = 0; t < kThreads; ++t)
    for (size_t i = 0; i < n; ++i)
      expect_same_result(got[t][i], want[i], 1e-6,
                         "thread " + std::to_string(t) + ", " + cases[i].input.name());

  const PipelineStats s = pipe.stats();
  EXPECT_EQ(s.requests, static_cast<int64_t>(n * (kThreads + 1)));
  EXPECT_EQ(s.busy, 0);
  EXPECT_EQ(s.chips, chips * (kThreads + 1));
  EXPECT_EQ(chips_in_batches(s), s.chips);
  EXPECT_LE(largest_batch(s), 8);
}

// ---- the batcher ---------------------------------------------------------------------------

std::vector<ImageInput> crop_inputs(size_t n) {
  static const char* kNames[] = {"adams",     "carell",   "clapton-1",
                                 "clapton-2", "lennon-1", "lennon-2"};
  std::vector<ImageInput> inputs;
  for (size_t i = 0; i < n; ++i) inputs.push_back(ImageInput::file(aligned_crop(kNames[i % 6])));
  return inputs;
}

// While a request is being prepared and max_delay_ms is far off, chips wait until max_batch of
// them fill a batch: 16 crops make exactly 4 batches of 4, and 2 more wait for the held one.
TEST_F(PipelineTest, BatchesFillToMaxBatchWhileARequestIsBeingPrepared) {
  Pipeline pipe = make_pipeline(options(4, 60000));
  HeldFile held(dir_ / "held.png", file_bytes(aligned_crop("adams")));
  std::future<ImageResult> held_result = pipe.submit(ImageInput::file(held.path()), crop_options());
  held.wait_for_reader();

  std::vector<std::future<ImageResult>> first;
  for (ImageInput& in : crop_inputs(16)) first.push_back(pipe.submit(in, crop_options()));
  for (size_t i = 0; i < first.size(); ++i)
    expect_unit_embedding(get(first[i], "crop " + std::to_string(i)), pipe.dim(), "crop");
  PipelineStats s = pipe.stats();
  EXPECT_EQ(batches_of(s, 4), 4);
  EXPECT_EQ(s.batches, 4);
  EXPECT_EQ(s.chips, 16);
  EXPECT_FALSE(ready(held_result));

  // Two chips do not fill a batch; nothing else starts one while the held request is prepared.
  std::vector<std::future<ImageResult>> second;
  for (ImageInput& in : crop_inputs(2)) second.push_back(pipe.submit(in, crop_options()));
  std::this_thread::sleep_for(200ms);  // room for a wrong early start; passing never waits on it
  EXPECT_FALSE(ready(second[0])) << "a batch of 2 < max_batch 4 started while a request was "
                                    "being prepared and max_delay_ms (60 s) had not passed";
  EXPECT_EQ(pipe.stats().batches, 4);

  held.release();
  const ImageResult h = get(held_result, "held");
  expect_unit_embedding(h, pipe.dim(), "held");
  for (size_t i = 0; i < second.size(); ++i)
    expect_unit_embedding(get(second[i], "late crop " + std::to_string(i)), pipe.dim(), "late");
  s = pipe.stats();
  EXPECT_EQ(s.chips, 19);
  EXPECT_EQ(chips_in_batches(s), 19);
  EXPECT_LE(largest_batch(s), 4);
  EXPECT_EQ(s.requests, 19);
}

// Many requests at once with max_batch 4: no batch is ever larger, and nothing is lost.
TEST_F(PipelineTest, NoBatchExceedsMaxBatch) {
  Pipeline pipe = make_pipeline(options(4, 5.0));
  const std::vector<ImageResult> results = pipe.run(crop_inputs(40), crop_options());
  ASSERT_EQ(results.size(), 40u);
  for (const ImageResult& r : results) expect_unit_embedding(r, pipe.dim(), r.name);
  const PipelineStats s = pipe.stats();
  EXPECT_LE(largest_batch(s), 4);
  EXPECT_GE(s.batches, 10);
  EXPECT_EQ(s.chips, 40);
  EXPECT_EQ(chips_in_batches(s), 40);
}

// A lone request is not held back for max_delay_ms: nothing else is being prepared, so its
// batch of one starts at once.
TEST_F(PipelineTest, LoneRequestDoesNotWaitForMaxDelay) {
  Pipeline pipe = make_pipeline(options(64, 60000));
  for (int i = 0; i < 3; ++i) {
    std::future<ImageResult> f =
        pipe.submit(ImageInput::file(aligned_crop("adams")), crop_options());
    ASSERT_EQ(f.wait_for(30s), std::future_status::ready)
        << "a lone request waited for max_delay_ms (60 s)";
    expect_unit_embedding(f.get(), pipe.dim(), "adams");
  }
  EXPECT_EQ(batches_of(pipe.stats(), 1), 3);
}

// With a short max_delay_ms a partial batch starts while another request is still being
// prepared.
TEST_F(PipelineTest, PartialBatchStartsAfterMaxDelay) {
  Pipeline pipe = make_pipeline(options(64, 1.0));
  HeldFile held(dir_ / "held.png", file_bytes(aligned_crop("adams")));
  std::future<ImageResult> held_result = pipe.submit(ImageInput::file(held.path()), crop_options());
  held.wait_for_reader();
  std::future<ImageResult> f =
      pipe.submit(ImageInput::file(aligned_crop("carell")), crop_options());
  expect_unit_embedding(get(f, "carell"), pipe.dim(), "carell");
  EXPECT_FALSE(ready(held_result));
  held.release();
  expect_unit_embedding(get(held_result, "held"), pipe.dim(), "held");
  EXPECT_EQ(batches_of(pipe.stats(), 1), 2);
}

// max_delay_ms bounds a submit()'s wait even while a run() is going on elsewhere: a bulk job
// whose next photo is slow to prepare must not hold an interactive request back.
TEST_F(PipelineTest, MaxDelayHoldsForSubmitWhileARunIsActive) {
  Pipeline pipe = make_pipeline(options(64, 1.0));
  HeldFile held(dir_ / "held.png", file_bytes(aligned_crop("adams")));
  std::vector<ImageResult> bulk;
  std::thread runner([&] { bulk = pipe.run({ImageInput::file(held.path())}, crop_options()); });
  held.wait_for_reader();
  std::future<ImageResult> f =
      pipe.submit(ImageInput::file(aligned_crop("carell")), crop_options());
  const bool done = f.wait_for(10s) == std::future_status::ready;
  EXPECT_TRUE(done) << "a submit() waited past max_delay_ms (1 ms) for 10 s, because a "
                       "run() with a request still being prepared was active";
  held.release();
  runner.join();
  expect_unit_embedding(get(f, "carell"), pipe.dim(), "carell");
  ASSERT_EQ(bulk.size(), 1u);
  expect_unit_embedding(bulk[0], pipe.dim(), "held");
}

// ---- kBusy and backpressure ----------------------------------------------------------------

bool says_busy(const ImageResult& r) {
  return r.error.find("busy") != std::string::npos || r.error.find("queue") != std::string::npos;
}

// max_queue 1 with one request in flight (held): every other submission is kBusy at once, with
// a message naming it; once the held one completes, a submission is accepted again.
TEST_F(PipelineTest, FullQueueAnswersBusyAtOnce) {
  Pipeline pipe = make_pipeline(options(64, 2.0, 1));
  HeldFile held(dir_ / "held.png", file_bytes(aligned_crop("adams")));
  std::future<ImageResult> held_result = pipe.submit(ImageInput::file(held.path()), crop_options());
  held.wait_for_reader();

  for (ImageInput& in : crop_inputs(4)) {
    const std::string name = in.name();
    std::future<ImageResult> f = pipe.submit(std::move(in), crop_options());
    ASSERT_TRUE(ready(f)) << "a kBusy result must be ready at once";
    const ImageResult r = f.get();
    EXPECT_EQ(r.status, InputStatus::kBusy) << name << ": " << status_name(r.status);
    EXPECT_EQ(r.name, name);
    EXPECT_NE(r.error.find(name), std::string::npos) << r.error;
    EXPECT_TRUE(says_busy(r)) << "unclear busy message: " << r.error;
    EXPECT_TRUE(r.faces.empty());
  }
  std::promise<ImageResult> called;
  std::future<ImageResult> by_callback = called.get_future();
  pipe.submit(ImageInput::file(aligned_crop("carell")), crop_options(),
              [&](ImageResult r) { called.set_value(std::move(r)); });
  EXPECT_EQ(get(by_callback, "carell by callback").status, InputStatus::kBusy);
  const PipelineStats s = pipe.stats();
  EXPECT_EQ(s.busy, 5);
  EXPECT_EQ(s.in_flight, 1);

  held.release();
  expect_unit_embedding(get(held_result, "held"), pipe.dim(), "held");
  EXPECT_EQ(pipe.stats().busy, 5);
}

TEST_F(PipelineTest, BusyCallbackRunsOnAPipelineThread) {
  Pipeline pipe = make_pipeline(options(64, 2.0, 1));
  HeldFile held(dir_ / "held.png", file_bytes(aligned_crop("adams")));
  std::future<ImageResult> held_result = pipe.submit(ImageInput::file(held.path()), crop_options());
  held.wait_for_reader();
  std::promise<std::thread::id> called_on;
  std::future<std::thread::id> thread = called_on.get_future();
  pipe.submit(ImageInput::file(aligned_crop("carell")), crop_options(), [&](ImageResult r) {
    EXPECT_EQ(r.status, InputStatus::kBusy);
    called_on.set_value(std::this_thread::get_id());
  });
  ASSERT_EQ(thread.wait_for(kPatience), std::future_status::ready);
  EXPECT_NE(thread.get(), std::this_thread::get_id())
      << "the kBusy callback ran on the submitting thread, inside submit()";
  held.release();
  expect_unit_embedding(get(held_result, "held"), pipe.dim(), "held");
}

// A request is completed when its result is handed over: by then its place in the queue is
// free. A caller that waits for each result before the next submission (max_queue 1) is never
// told kBusy, and stats() right after the result counts nothing in flight. (The other tests
// leave in_flight after completion to this one.)
TEST_F(PipelineTest, AResultFreesItsQueuePlaceBeforeItIsHandedOver) {
  Pipeline pipe = make_pipeline(options(64, 2.0, 1));
  const HeldPixels adams = pixels_of(aligned_crop("adams"), PixelOrder::kBgr, 0);
  constexpr int kRounds = 50;
  int busy = 0, still_in_flight = 0;
  for (int i = 0; i < kRounds; ++i) {
    std::future<ImageResult> f =
        pipe.submit(ImageInput::pixels(adams.view, "adams"), crop_options());
    busy += get(f, "adams").status == InputStatus::kBusy;
    still_in_flight += pipe.stats().in_flight != 0;
  }
  EXPECT_EQ(busy, 0) << "of " << kRounds
                     << " sequential submissions, each after the previous "
                        "result, were answered kBusy by a queue of one";
  EXPECT_EQ(still_in_flight, 0) << "of " << kRounds
                                << " results, stats() just after counted "
                                   "the completed request in flight";
}

// A slow pipeline (the reference backend) with max_queue 1 and eight threads submitting at
// once: each result is done or kBusy, nothing is lost, and the counts agree.
TEST_F(PipelineTest, ConcurrentSubmissionsToAFullQueueAreDoneOrBusy) {
  Pipeline pipe = make_pipeline(options(64, 2.0, 1, Device::kCpuReference));
  constexpr int kThreads = 8;
  std::vector<ImageResult> results(kThreads);
  std::atomic<int> arrived{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      ++arrived;
      while (arrived.load() < kThreads) std::this_thread::yield();
      std::future<ImageResult> f =
          pipe.submit(ImageInput::file(aligned_crop("clapton-1")), crop_options());
      results[t] = get(f, "thread " + std::to_string(t));
    });
  for (auto& th : threads) th.join();
  int ok = 0, busy = 0;
  for (const ImageResult& r : results) {
    if (r.status == InputStatus::kBusy) {
      ++busy;
      EXPECT_TRUE(says_busy(r)) << r.error;
    } else {
      ++ok;
      expect_unit_embedding(r, pipe.dim(), r.name);
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_EQ(ok + busy, kThreads);
  const PipelineStats s = pipe.stats();
  EXPECT_EQ(s.busy, busy);
  EXPECT_EQ(s.chips, ok);
}

// run() waits for room instead of answering kBusy, even when two threads run() at once into a
// queue of one; results come in input order.
TEST_F(PipelineTest, RunAppliesBackpressureInsteadOfBusy) {
  Pipeline pipe = make_pipeline(options(64, 2.0, 1));
  auto run_all = [&](size_t n, std::vector<ImageResult>& out) {
    std::vector<ImageInput> inputs = crop_inputs(n);
    std::vector<std::string> names;
    for (const ImageInput& in : inputs) names.push_back(in.name());
    size_t progress = 0;
    pipe.run(
        std::move(inputs), crop_options(), [&](ImageResult& r) { out.push_back(std::move(r)); },
        [&](size_t done, size_t total) {
          EXPECT_EQ(total, n);
          EXPECT_EQ(done, ++progress);
        });
    ASSERT_EQ(out.size(), n);
    for (size_t i = 0; i < n; ++i) {
      EXPECT_EQ(out[i].name, names[i]) << "result " << i << " out of order";
      expect_unit_embedding(out[i], pipe.dim(), out[i].name);
    }
  };
  std::vector<ImageResult> a, b;
  std::thread other([&] { run_all(12, b); });
  run_all(12, a);
  other.join();
  const PipelineStats s = pipe.stats();
  EXPECT_EQ(s.busy, 0);
  EXPECT_EQ(s.requests, 24);
  // The slow backend: run() over a queue of one still never gives kBusy.
  Pipeline slow = make_pipeline(options(64, 2.0, 1, Device::kCpuReference));
  const std::vector<ImageResult> r = slow.run(crop_inputs(4), crop_options());
  ASSERT_EQ(r.size(), 4u);
  for (const ImageResult& x : r) EXPECT_EQ(x.status, InputStatus::kOk) << x.name << ": " << x.error;
  EXPECT_EQ(slow.stats().busy, 0);
}

// ---- one image, three ways -----------------------------------------------------------------

// The same image as a path, encoded bytes, packed BGR pixels, and BGR and RGB pixels with padded
// rows: the same faces and bit-identical embeddings (one request at a time, so equal batches).
void expect_same_every_way(Pipeline& pipe, const fs::path& file, const RequestOptions& opt) {
  const HeldPixels bgr = pixels_of(file, PixelOrder::kBgr, 0);
  const HeldPixels bgr_padded = pixels_of(file, PixelOrder::kBgr, 5);
  const HeldPixels rgb_padded = pixels_of(file, PixelOrder::kRgb, 64);
  std::vector<ImageInput> inputs = {
      ImageInput::file(file), ImageInput::bytes(file_bytes(file), "bytes"),
      ImageInput::pixels(bgr.view, "bgr"), ImageInput::pixels(bgr_padded.view, "bgr padded"),
      ImageInput::pixels(rgb_padded.view, "rgb padded")};
  std::vector<ImageResult> results;
  for (ImageInput& in : inputs) {
    const std::string name = in.name();
    std::future<ImageResult> f = pipe.submit(std::move(in), opt);
    results.push_back(get(f, name));
    results.back().name = file.string();  // names differ by design; everything else must not
    expect_unit_embedding(results.back(), pipe.dim(), name);
  }
  const char* ways[] = {"file", "bytes", "bgr", "bgr padded", "rgb padded"};
  for (size_t i = 1; i < results.size(); ++i)
    expect_same_result(results[i], results[0], 0.0, file.filename().string() + " as " + ways[i]);
}

TEST_F(PipelineTest, CropAsFileBytesOrPixelsGivesOneEmbedding) {
  Pipeline pipe = make_pipeline();
  expect_same_every_way(pipe, aligned_crop("clapton-2"), crop_options());
}

TEST_F(PipelineTest, PhotoAsFileBytesOrPixelsGivesOneEmbedding) {
  FN_REQUIRE_LANDMARK_MODELS();
  Pipeline pipe = make_pipeline();
  expect_same_every_way(pipe, lfw_photo("Aaron_Eckhart"), photo_options());
}

// ---- tasks ---------------------------------------------------------------------------------

ImageResult one(Pipeline& pipe, ImageInput in, const RequestOptions& opt) {
  const std::string name = in.name();
  std::future<ImageResult> f = pipe.submit(std::move(in), opt);
  ImageResult r = get(f, name);
  EXPECT_TRUE(r.ok()) << name << ": " << status_name(r.status) << " " << r.error;
  return r;
}

TEST_F(PipelineTest, DetectGivesBoxesAndLandmarksWithoutEmbeddings) {
  FN_REQUIRE_LANDMARK_MODELS();
  Pipeline pipe = make_pipeline();
  const ImageResult r =
      one(pipe, ImageInput::file(lfw_photo("Aaron_Sorkin")), photo_options(Task::kDetect));
  EXPECT_EQ(r.width, 250);
  EXPECT_EQ(r.height, 250);
  ASSERT_EQ(r.faces.size(), 1u);
  const FaceResult& f = r.faces[0];
  EXPECT_FALSE(f.fallback);
  const FaceBox& b = f.face.box;
  EXPECT_GT(b.width(), 50);
  EXPECT_TRUE(b.contains(125, 125)) << "LFW photos are centred on the face";
  EXPECT_EQ(f.face.landmarks.size(), 68u);
  EXPECT_EQ(f.face.landmarks5.size(), 5u);
  const double margin = 0.2 * b.width();  // the jaw line may leave a tight box a little
  for (const Point2f& p : f.face.landmarks) {
    EXPECT_GE(p.x, b.left - margin);
    EXPECT_LE(p.x, b.right + margin);
    EXPECT_GE(p.y, b.top - margin);
    EXPECT_LE(p.y, b.bottom + margin);
  }
  EXPECT_TRUE(f.chips.empty());
  EXPECT_TRUE(f.embedding.empty());
  EXPECT_FALSE(f.match.has_value());
  EXPECT_EQ(pipe.stats().chips, 0) << "kDetect encoded something";
}

// kAlign's chip, given back as a crop, encodes to the photo's own embedding.
TEST_F(PipelineTest, AlignGivesTheChipTheEmbeddingIsMadeFrom) {
  FN_REQUIRE_LANDMARK_MODELS();
  Pipeline pipe = make_pipeline();
  const fs::path photo = lfw_photo("Aaron_Peirsol");
  const ImageResult aligned = one(pipe, ImageInput::file(photo), photo_options(Task::kAlign));
  ASSERT_EQ(aligned.faces.size(), 1u);
  ASSERT_EQ(aligned.faces[0].chips.size(), 1u);
  const Bgr8Image& chip = aligned.faces[0].chips[0];
  EXPECT_EQ(chip.height, 96);
  EXPECT_EQ(chip.width, 96);
  EXPECT_EQ(chip.pixels.size(), size_t{96} * 96 * 3);
  EXPECT_TRUE(aligned.faces[0].embedding.empty());

  const ImageResult encoded = one(pipe, ImageInput::file(photo), photo_options());
  const PixelView view{chip.pixels.data(), chip.height, chip.width, 0, PixelOrder::kBgr};
  const ImageResult as_crop = one(pipe, ImageInput::pixels(view, "chip"), crop_options());
  ASSERT_EQ(encoded.faces.size(), 1u);
  ASSERT_EQ(as_crop.faces.size(), 1u);
  expect_same_box_and_landmarks(encoded.faces[0], aligned.faces[0], "encode vs align");
  expect_same_embedding(as_crop.faces[0].embedding, encoded.faces[0].embedding, 0.0,
                        "chip as a crop vs the photo");
  const FaceBox& whole = as_crop.faces[0].face.box;
  EXPECT_EQ(whole.left, 0);
  EXPECT_EQ(whole.top, 0);
  EXPECT_EQ(whole.width(), 96) << "a crop's box is the whole image";
  EXPECT_EQ(whole.height(), 96);
}

GalleryMatrix gallery_of(const Pipeline& pipe, const std::vector<std::string>& names,
                         const std::vector<ImageResult>& encoded) {
  GalleryMatrix g;
  g.spec = pipe.spec();
  for (size_t i = 0; i < names.size(); ++i) {
    const std::vector<float>& e = encoded[i].faces.at(0).embedding;
    g.vectors.insert(g.vectors.end(), e.begin(), e.end());
    g.embedding_ids.push_back(static_cast<int64_t>(i) + 1);
    g.identity_ids.push_back(static_cast<int64_t>(i) + 1);
    Identity id;
    id.id = static_cast<int64_t>(i) + 1;
    id.name = names[i];
    id.metadata = "{}";
    id.embeddings = 1;
    g.identities.push_back(id);
  }
  return g;
}

// Enrolled people are found as themselves; a stranger is "unknown" under a tight threshold.
TEST_F(PipelineTest, IdentifyFindsTheEnrolledAndNotAStranger) {
  FN_REQUIRE_LANDMARK_MODELS();
  Pipeline pipe = make_pipeline();
  const std::vector<std::string> people = {"Aaron_Eckhart", "Aaron_Peirsol", "Aaron_Sorkin"};
  std::vector<ImageInput> photos;
  for (const auto& p : people) photos.push_back(ImageInput::file(lfw_photo(p)));
  const std::vector<ImageResult> encoded = pipe.run(photos, photo_options());
  for (const ImageResult& r : encoded) expect_unit_embedding(r, pipe.dim(), r.name);
  pipe.set_gallery(gallery_of(pipe, people, encoded));
  EXPECT_EQ(pipe.gallery_rows(), 3);

  RequestOptions identify = photo_options(Task::kIdentify);
  identify.k = 2;
  const std::vector<ImageResult> found = pipe.run(photos, identify);
  for (size_t i = 0; i < people.size(); ++i) {
    ASSERT_TRUE(found[i].ok()) << found[i].error;
    ASSERT_EQ(found[i].faces.size(), 1u);
    const FaceResult& f = found[i].faces[0];
    ASSERT_TRUE(f.match.has_value()) << people[i];
    EXPECT_EQ(f.match->best, people[i]);
    EXPECT_LT(f.match->distance, 1e-3);
    ASSERT_EQ(f.match->top.size(), 2u);
    EXPECT_EQ(f.match->top[0].name, people[i]);
    EXPECT_LE(f.match->top[0].distance, f.match->top[1].distance);
    expect_same_embedding(f.embedding, encoded[i].faces[0].embedding, 1e-6, people[i]);
  }

  identify.threshold = 0.05;  // far below any two people's distance
  const ImageResult stranger = one(pipe, ImageInput::file(lfw_photo("Abdullah_Gul")), identify);
  ASSERT_EQ(stranger.faces.size(), 1u);
  ASSERT_TRUE(stranger.faces[0].match.has_value());
  EXPECT_EQ(stranger.faces[0].match->best, "unknown");
  EXPECT_GT(stranger.faces[0].match->distance, 0.05);
  ASSERT_FALSE(stranger.faces[0].match->top.empty());
  EXPECT_NE(stranger.faces[0].match->top[0].name, "unknown") << "top still lists the nearest";
}

// ---- a backend that fails -------------------------------------------------------------------

// Fails its first forward pass, then returns zeros.
class FailOnceBackend final : public Backend {
 public:
  explicit FailOnceBackend(int64_t dim) : dim_(dim) {}
  std::string name() const override { return "fail-once"; }
  void forward(const float*, int64_t n, float* y) override {
    if (calls_++ == 0) fail("device lost (test)");
    std::fill_n(y, n * dim_, 0.f);
  }

 private:
  int64_t dim_;
  int calls_ = 0;
};

// A failed forward fails its batch's requests, including one whose chips are split over that
// batch and the next (two faces, mirrored: 4 chips in batches of 3), and the pipeline goes on:
// a request submitted after it is encoded.
TEST_F(PipelineTest, AFailedBatchFailsItsRequestsAndThePipelineGoesOn) {
  FN_REQUIRE_LANDMARK_MODELS();
  Model m = load_model(test::converted_model("openface"));
  const int64_t dim = m.embedding_dim();
  PipelineOptions po = options(3, 1.0);
  Pipeline pipe(std::move(m), std::make_unique<FailOnceBackend>(dim), po);
  RequestOptions two = photo_options();
  two.faces.pick = FacePick::kAll;
  two.faces.mirror = true;
  const fs::path photo =
      test::shared_path("data/openface-examples/images/examples") / "longoria-cooper.jpg";
  std::future<ImageResult> split = pipe.submit(ImageInput::file(photo), two);
  ASSERT_EQ(split.wait_for(kPatience), std::future_status::ready) << "the split request hung";
  const ImageResult r = split.get();
  EXPECT_EQ(r.status, InputStatus::kFailed);
  EXPECT_NE(r.error.find("device lost"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("longoria-cooper.jpg"), std::string::npos) << r.error;
  std::future<ImageResult> after =
      pipe.submit(ImageInput::file(aligned_crop("adams")), crop_options());
  ASSERT_EQ(after.wait_for(kPatience), std::future_status::ready) << "the batcher stopped";
  const ImageResult a = after.get();
  EXPECT_TRUE(a.ok()) << a.error;
  ASSERT_EQ(a.faces.size(), 1u);
  EXPECT_EQ(a.faces[0].embedding.size(), static_cast<size_t>(dim));
  EXPECT_EQ(pipe.stats().in_flight, 0);
}

// A callback that throws loses nothing but its own call: the thread that ran it goes on.
TEST_F(PipelineTest, AThrowingCallbackDoesNotStopThePipeline) {
  Pipeline pipe = make_pipeline(options(64, 1.0));
  std::promise<void> thrown;
  pipe.submit(ImageInput::file(aligned_crop("adams")), crop_options(), [&](ImageResult) {
    thrown.set_value();
    throw std::runtime_error("caller's bug");
  });
  thrown.get_future().wait();
  std::future<ImageResult> next =
      pipe.submit(ImageInput::file(aligned_crop("carell")), crop_options());
  ASSERT_EQ(next.wait_for(kPatience), std::future_status::ready);
  EXPECT_TRUE(next.get().ok());
}

// run() ends early when its callback throws, but only once every request it queued is
// done: their inputs may borrow the caller's pixels, which the caller frees after the throw.
TEST_F(PipelineTest, RunThatThrowsFinishesWhatItQueuedFirst) {
  Pipeline pipe = make_pipeline(options(4, 1.0));
  const HeldPixels lennon = pixels_of(aligned_crop("lennon-1"), PixelOrder::kRgb, 7);
  std::vector<ImageInput> inputs;
  for (int i = 0; i < 24; ++i)
    inputs.push_back(ImageInput::borrowed_pixels(lennon.view, "lennon " + std::to_string(i)));
  EXPECT_THROW(pipe.run(std::move(inputs), crop_options(), {},
                        [](size_t, size_t) { throw std::runtime_error("caller stops"); }),
               std::runtime_error);
  EXPECT_EQ(pipe.stats().in_flight, 0) << "run() returned with requests still reading its inputs";
}

}  // namespace
}  // namespace facenet
