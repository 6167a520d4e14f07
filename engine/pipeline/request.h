// Internal to engine/pipeline: a request in flight, and its preparation (decode -> faces ->
// chips) and completion (views -> face embeddings), apart from the queueing and batching.
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "engine/image/image_io.h"
#include "engine/pipeline/pipeline.h"

namespace facenet {

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
  int views = 1;               // chips per face
  int64_t chips = 0;           // faces * views
  std::vector<float> in_f32;   // chips x per_image floats (forward path)
  std::vector<uint8_t> in_u8;  // chips x H x W x 3 BGR (staged path)
  std::vector<float> out;      // chips x dim, filled by the batcher
  int64_t pending = 0;         // chips not yet encoded (batcher thread only)
  uint64_t seq = 0;            // submission order
  bool matched = false;        // kIdentify done on the device
  bool bulk = false;           // from run(): waits for full batches, not max_delay
};
using RequestPtr = std::shared_ptr<Request>;

struct ChipRef {
  RequestPtr req;
  int64_t index = 0;  // chip within the request
};

// What a chip must become for the backend: the model's input rule, floats (forward) or
// 8-bit BGR at the input size (staged).
struct ChipLayout {
  const Graph* graph = nullptr;
  InputSpec spec;
  int64_t per_image = 0, image_bytes = 0, dim = 0;
  bool staged = false;
};

// Decodes r.input, finds and aligns its faces as r.opt says, fills r.result (name, size,
// faces; chips for kAlign) and, for kEncode/kIdentify, the chip buffers and r.chips. Throws
// InputError for a bad input, facenet::Error for a failure. `faces` gives the face models
// (null in a build without dlib).
void prepare_request(Request& r, const ChipLayout& layout,
                     const std::function<const FaceModels&()>& faces);

// Marks the request failed: status, message, no faces and no chips to encode.
void fail_request(Request& r, InputStatus s, std::string message);

// Each face's embedding from its chips' rows in r.out: their mean (one unless mirrored or
// jittered), re-normalised when the model ends in an L2 normalisation (`normalised`).
void embed_faces(Request& r, int64_t dim, bool normalised);

}  // namespace facenet
