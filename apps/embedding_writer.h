// The encode commands' output: JSON lines (stdout or a file, flushed per batch so finished
// work survives a later failure) or an N x D float32 .npy plus <out>.paths.jsonl naming each
// row, one JSON string per line (see dump_json: any file name survives, newlines included).
#pragma once

#include <cstdint>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace facenet::cli {

class EmbeddingWriter {
 public:
  // format: "jsonl" | "npy"; output: file path ("" = stdout, jsonl only).
  EmbeddingWriter(std::string format, std::string output);
  // One embedding; jsonl writes `fields` (e.g. {"image", ...}, {"face", i}) plus "embedding".
  void add(nlohmann::json fields, const std::string& row_name, const float* embedding, int64_t dim);
  void flush() { out_->flush(); }
  // Writes the .npy and the paths list (npy format); returns the rows written.
  size_t finish(int64_t dim);

 private:
  std::string format_, output_;
  std::ofstream file_;
  std::ostream* out_ = &std::cout;
  std::vector<float> rows_;
  std::vector<std::string> names_;
};

}  // namespace facenet::cli
