// dlib's CNN face detector (mmod_human_face_detector.dat, dlib's MMOD network): its network in
// our ops, the detection settings read off the .dat, and the converter to our model file.
#pragma once

#include <array>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/model/model.h"

namespace facenet {

// How dlib turns an image into the network's input and its score map into boxes; stored in
// the model's preprocess ("detector") by the converter.
struct MmodSettings {
  std::array<double, 3> mean_rgb{};  // y = (pixel - mean_c) * scale
  double scale = 1.0 / 256.0;
  int pyramid_down = 6;  // dlib's pyramid_down<N>: each level (N-1)/N of the previous
  long padding = 10, outer_padding = 11;  // the tiled pyramid's gaps and border
  struct Window {
    long width = 0, height = 0;  // the detection window in input-tensor pixels
    std::string label;
  };
  std::vector<Window> windows;          // one score channel each
  double nms_iou = 0, nms_covered = 1;  // dlib's test_box_overlap of the non-max suppression
  double threshold = 0;                 // a location scoring above this is a detection
  // The graph output's pixel (c, r) sits at input-tensor pixel (c, r) * map_scale + map_offset
  // (dlib's output_tensor_to_input_tensor), worked out from the graph's convolutions.
  double map_scale = 1, map_offset = 0;
};

// The network of dlib's examples/dnn_mmod_face_detection_ex.cpp in our ops:
//   downsampler: 3 x (conv 5x5/2 pad 0, affine, relu): 16, 32, 32 channels (stride 8 in all)
//   3 x (conv 5x5/1 pad 2 (45 channels), affine, relu), conv 9x9/1 pad 4 -> 1 score channel.
// Its input shape is nominal (the tiled pyramid of a 250x250 photo): a detector sets it per
// pyramid size.
Graph dlib_mmod_graph();

// Reads the .dat with dlib, copies every conv and affine tensor into the graph's tensors and
// the input layer's and loss layer's settings into preprocess.detector; checks the geometry
// layer by layer. Throws facenet::Error naming the file on a mismatch, and for settings this
// engine does not implement (bounding-box regression, another pyramid rate).
Model convert_dlib_mmod(const std::filesystem::path& dat);
Model convert_dlib_mmod_bytes(const std::string& bytes, const std::string& origin);

// The model's detection settings, checked; throws facenet::Error naming `origin` and the field.
MmodSettings mmod_settings(const Model& model, const std::string& origin);

// The model with every convolution's output channels (but a single-channel score layer's)
// rounded up to a multiple of `multiple` by zero filters, and the next layers' tensors
// zero-extended to match: the extra channels are relu(0 * x + 0) = 0 all the way, so the
// output is the same up to float summation order, and the backends' kernels run whole vectors
// (45 -> 48 channels: oneDNN's 5x5 layers 15-30% faster for 14% more multiply-adds). For a
// chain of conv / affine / relu; any other graph is returned as it is.
Model pad_conv_channels(Model m, int64_t multiple);

}  // namespace facenet
