// The front door: images (files, encoded bytes or pixel buffers) -> detect -> landmarks ->
// align -> encode -> search a gallery, for any number of threads at once. Requests are
// prepared (decoded, detected, aligned) on worker threads, their face chips grouped across
// requests by a dynamic batcher (up to max_batch chips, waiting at most max_delay_ms for more)
// and encoded by one backend on one thread. Results are plain values; a bad input is a result
// with its status and a message naming it, never an exception that loses the others.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/face/find_faces.h"
#include "engine/image/image.h"
#include "engine/model/model.h"
#include "engine/search/recognition.h"

namespace facenet {

enum class InputStatus {
  kOk,           // done (possibly with no face: see faces)
  kUnreadable,   // the file cannot be opened or read
  kUndecodable,  // not an image the decoder understands (or an invalid pixel buffer)
  kBusy,         // the pipeline's queue was full; nothing was done, try again later
  kFailed,       // the engine failed on this input (message says why)
};
const char* status_name(InputStatus s);

// One input image. Pixels are copied when the input is made, so the caller's buffer may be
// reused at once; bytes are moved in; a file is read by a worker thread.
class ImageInput {
 public:
  static ImageInput file(std::filesystem::path path);
  // `name` names the input in results and errors (e.g. an upload's file name).
  static ImageInput bytes(std::vector<uint8_t> data, std::string name);
  static ImageInput pixels(const PixelView& view, std::string name);
  // The same without the copy: the worker converts the caller's pixels when it prepares the
  // request, so the caller must keep them alive and unchanged until the request completes
  // (a synchronous run(), or a future waited for). For bindings whose callers hold the
  // buffer anyway: the conversion runs on the workers, in parallel, not on the caller.
  static ImageInput borrowed_pixels(const PixelView& view, std::string name);

  const std::string& name() const { return name_; }
  const std::filesystem::path& path() const { return path_; }  // empty unless a file

  // Known face boxes (face_recognition's known_face_locations): no detection; the landmarks
  // are located in each box and the faces kept in this order (none: no faces). Ignored when
  // the request's detector is kNone (the input is then a crop).
  ImageInput& with_boxes(std::vector<FaceBox> boxes);
  const std::optional<std::vector<FaceBox>>& boxes() const { return boxes_; }

  // An input already known to be unusable, e.g. a directory entry that could not be walked
  // (file_inputs): its result has status kUnreadable and `why` as the error.
  static ImageInput unusable(std::filesystem::path path, std::string why);

  // The image as 8-bit BGR (a pixel input gives its copy up); an encoded image above
  // `max_pixels` (its header says) is refused before decoding. Throws facenet::Error naming
  // the input, with `status` set to kUnreadable (a file that cannot be read) or kUndecodable.
  Bgr8Image decode(InputStatus& status, int64_t max_pixels = kDefaultMaxPixels);

 private:
  enum class Kind { kFile, kBytes, kPixels, kBorrowedPixels };
  Kind kind_ = Kind::kFile;
  std::string name_;
  std::filesystem::path path_;
  std::vector<uint8_t> bytes_;
  Bgr8Image pixels_;
  PixelView borrowed_;
  std::string invalid_;  // why a pixel view or a directory entry cannot be used; the result
  std::optional<std::vector<FaceBox>> boxes_;
};

enum class Task {
  kDetect,    // decode + detect + landmarks
  kAlign,     // ... + the aligned chips (FaceResult::chips)
  kEncode,    // ... + the embedding of each face
  kIdentify,  // ... + the nearest identities of the pipeline's gallery (set_gallery)
};

struct RequestOptions {
  Task task = Task::kEncode;
  // faces.detector kNone: the input is an aligned face crop, encoded whole (resized to the
  // model input when needed); no detection, landmarks or alignment.
  FaceOptions faces;
  // The chip alignment; none: the model's own (preprocess.alignment). A dlib ResNet takes
  // kDlibChip150From68 too (face_recognition's model="large").
  std::optional<Alignment> alignment;
  // Images above this many pixels (width x height, read from the header before decoding) are
  // refused as kUndecodable; so is detection whose upsampling would make an image above it.
  int64_t max_pixels = kDefaultMaxPixels;
  int k = 5;              // kIdentify: identities per face
  double threshold = -1;  // kIdentify: "unknown" above this L2 distance; < 0: the model's own
};

struct FaceResult {
  Face face;                     // box (the whole image for a crop), detector score, landmarks
  bool fallback = false;         // the box is FaceOptions::fallback
  bool cnn = false;              // found by the CNN detector
  std::vector<Bgr8Image> chips;  // kAlign: the chips the embedding is made from
  std::vector<float> embedding;  // kEncode and kIdentify
  std::optional<Identification> match;  // kIdentify
};

struct ImageResult {
  std::string name;  // ImageInput::name()
  InputStatus status = InputStatus::kOk;
  std::string error;              // why, naming the input; empty when kOk
  int width = 0, height = 0;      // the decoded image
  bool off_centre_seen = false;   // FaceOptions::centre_only set a detection aside
  std::vector<FaceResult> faces;  // empty and kOk: no face found
  bool ok() const { return status == InputStatus::kOk; }
};

struct PipelineOptions {
  BackendOptions backend;
  std::filesystem::path dlib_models;  // empty: default_dlib_models_dir(); read when first needed
  int max_batch = 64;                 // chips per forward pass
  // A batch starts when it is full, when no request is being prepared (nothing more is coming
  // soon), or when a chip of a submit() request has waited this long. run()'s requests wait for
  // full batches instead (throughput, and the same batches every run), but never hold back a
  // submit() request past its delay.
  // < 0: automatic, 10 ms on the CPU backends (the forward shares the cores with preparation,
  // so a batch of 1-2 chips costs the photos behind it; 16 single-photo submitters on raw LFW
  // photos: 143 -> 168-172 photos/s against 2 ms, bench/results/pipeline-cpu-2026-12-01) and
  // 2 ms on CUDA (a separate device: start as soon as there is work).
  double max_delay_ms = -1;
  // Requests in flight (submitted, not completed); beyond: kBusy. run() keeps a quarter of it
  // free for submit(), and submit()'s chips go first into a batch.
  int max_queue = 1024;
  int workers = 0;          // threads preparing requests; 0 = one per core
  RequestOptions defaults;  // what submit() without options and run() without options use
};

struct PipelineStats {
  int64_t requests = 0, busy = 0, batches = 0, chips = 0;
  int in_flight = 0;                 // submitted, not completed
  std::vector<int64_t> batch_sizes;  // batches run, by size (index = chips in the batch)
};

class Pipeline {
 public:
  // Loads the model and makes its backend; throws facenet::Error naming what is wrong.
  explicit Pipeline(const std::filesystem::path& model_file, const PipelineOptions& options = {});
  // A Model{} without nodes makes a detection-only pipeline (Task::kDetect; others fail).
  Pipeline(Model model, const PipelineOptions& options = {});
  // With a backend made by the caller (e.g. a test double); options.backend is not used.
  Pipeline(Model model, std::unique_ptr<Backend> backend, const PipelineOptions& options = {});
  // Completes every request already submitted, then stops the threads.
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  const Model& model() const;
  const PipelineOptions& options() const;
  EmbeddingSpec spec() const;
  int64_t dim() const;
  std::string backend_name() const;
  // The model's own threshold (preprocess.threshold), else kDefaultThreshold.
  double default_threshold() const;

  // Asynchronous, from any thread. When max_queue requests are in flight the result is ready
  // at once with status kBusy.
  std::future<ImageResult> submit(ImageInput input);
  std::future<ImageResult> submit(ImageInput input, const RequestOptions& options);
  // The same with a callback, called once on a pipeline thread (keep it short; it must not
  // wait for other requests of this pipeline).
  void submit(ImageInput input, const RequestOptions& options,
              std::function<void(ImageResult)> done);

  // Every input, with backpressure instead of kBusy: `on_result` is called in input order
  // (on the calling thread), `on_progress(done, total)` after each.
  void run(std::vector<ImageInput> inputs, const RequestOptions& options,
           const std::function<void(ImageResult&)>& on_result,
           const std::function<void(size_t, size_t)>& on_progress = {});
  std::vector<ImageResult> run(std::vector<ImageInput> inputs, const RequestOptions& options);

  // The gallery Task::kIdentify searches (replacing any earlier one). On CUDA its index lives
  // on the backend's GPU context and stream, and probes are searched where they were encoded.
  void set_gallery(GalleryMatrix gallery, std::optional<CpuStorage> storage = std::nullopt);
  int64_t gallery_rows() const;

  PipelineStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Inputs from command-line style arguments: files as given, directories expanded (recursive,
// sorted, image extensions only); a directory entry that cannot be walked becomes an
// ImageInput::unusable naming it, in its place, so it is reported like any bad input.
std::vector<ImageInput> file_inputs(const std::vector<std::string>& args);

}  // namespace facenet
