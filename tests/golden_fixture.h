// The golden embeddings of the happy-house images (shared/golden/nn4small2-happy-house.json)
// and the model inputs made from them, for the suites that compare against them.
#pragma once

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/image/image_io.h"
#include "engine/model/model.h"
#include "tests/model_fixture.h"

namespace facenet::test {

struct GoldenImage {
  std::string path;
  std::vector<float> embedding;
  nlohmann::json blocks;
};

inline std::vector<GoldenImage> golden(const std::string& variant) {
  std::ifstream in(shared_path("golden/nn4small2-happy-house.json"));
  EXPECT_TRUE(in.good()) << "golden file missing under " << shared_dir();
  const auto j = nlohmann::json::parse(in);
  std::vector<GoldenImage> out;
  for (const auto& e : j.at("variants").at(variant))
    out.push_back({(shared_path("data") / e.at("image").get<std::string>()).string(),
                   e.at("embedding").get<std::vector<float>>(),
                   e.value("blocks", nlohmann::json())});
  return out;
}

inline std::vector<float> load_inputs(const Model& m, const std::vector<GoldenImage>& imgs) {
  const InputSpec spec = input_spec(m.graph);
  const int64_t per = element_count(m.graph.input_shape);
  std::vector<float> x(per * imgs.size());
  for (size_t i = 0; i < imgs.size(); ++i) load_image(imgs[i].path, spec, x.data() + i * per);
  return x;
}

// Largest |got - golden| over the first n images (got: n x 128); every value must be finite.
inline double max_abs_error(const std::vector<float>& got, const std::vector<GoldenImage>& imgs,
                            size_t n) {
  double err = 0;
  for (size_t i = 0; i < n; ++i)
    err = std::max(err, max_abs_diff(got.data() + i * 128, imgs[i].embedding.data(),
                                     imgs[i].embedding.size()));
  return err;
}

// The golden file names blocks by their concat node, the stem by "stem" (node pool2).
inline std::string block_node(const std::string& block) {
  return block == "stem" ? "pool2" : block;
}

// `full` cut after `node`: the node's activation becomes the output (localises a mismatch).
inline Model truncated_after(const Model& full, const std::string& node) {
  Model m = full;
  m.graph.nodes.resize(m.graph.index_of(node) + 1);
  m.graph.output = node;
  validate_model(m);
  return m;
}

}  // namespace facenet::test
