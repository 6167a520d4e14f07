// dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1.dat: 150x150 RGB face
// chip -> 128-d descriptor): its graph in our op set, the converter from dlib's .dat, and
// dlib's own forward pass (the peer our executors are checked against).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/model/model.h"

namespace facenet {

// The network of dlib's examples/dnn_face_recognition_ex.cpp ("anet_type") spelled in our ops:
//   conv 7x7/2 pad 0 (3->32), affine, relu, maxpool 3/2 pad 0            -> 32 x 35 x 35
//   3 x res(32); res_down(64) + 3 x res(64); res_down(128) + 2 x res(128);
//   res_down(256) + 2 x res(256); res_down(256)                          -> 256 x 2 x 2
//   avgpool over the whole map, dense 256->128 without bias (zero bias tensor)
// res(N):      x -> conv 3x3/1 pad 1, affine, relu, conv 3x3/1 pad 1, affine -> add x -> relu
// res_down(N): x -> conv 3x3/2 pad 0, affine, relu, conv 3x3/1 pad 1, affine
//                   -> add (avgpool 2x2/2 pad 0 of x) -> relu
// dlib's rules, read off dlib/dnn/layers.h: a conv or pool with stride != 1 has padding 0,
// stride 1 pads k/2; add_prev sizes its output to the larger input on every axis and treats
// the missing elements of the smaller one as 0 (so 32->64 channels are zero-extended, and a
// 3x3 strided-conv branch is added into the top-left of the 4x4 pooled skip).
// The output is dlib's raw descriptor (not L2-normalised; dlib's match threshold is L2 0.6).
// Preprocess: "alignment": "dlib-chip-150-0.25" (5-point landmarks, dlib::get_face_chip_details
// size 150 padding 0.25), y = (pixel - mean_c) / 256 with dlib's mean RGB (122.782, 117.001,
// 104.298).
Graph dlib_resnet_graph();

// Reads the .dat with dlib (deserialising into the network type above), copies every conv,
// affine and fc tensor into the graph's tensors (fc weights transposed to [out, in]) and checks
// kernel, stride, padding and channel counts layer by layer. Throws facenet::Error naming the
// file on a mismatch.
Model convert_dlib_resnet(const std::filesystem::path& dat);
// The same from the .dat's bytes; `origin` (a path or a label) starts every error message.
Model convert_dlib_resnet_bytes(const std::string& bytes, const std::string& origin);

// dlib's own forward pass on `n` 8-bit BGR chips of height x width, rows packed, one after the
// other (n x height x width x 3): n x 128 descriptors, row-major. The chips must be 150x150
// (throws facenet::Error naming the size otherwise).
std::vector<float> dlib_resnet_forward(const std::filesystem::path& dat, const unsigned char* bgr,
                                       int64_t n, int height, int width);

}  // namespace facenet
