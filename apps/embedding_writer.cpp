// EmbeddingWriter: see embedding_writer.h.
#include "apps/embedding_writer.h"

#include <filesystem>
#include "apps/face_json.h"

#include "engine/core/error.h"
#include "engine/core/npy.h"

namespace facenet::cli {

EmbeddingWriter::EmbeddingWriter(std::string format, std::string output)
    : format_(std::move(format)), output_(std::move(output)) {
  if (format_ == "npy" && output_.empty())
    fail("--format npy needs -o <file.npy> (binary output is not written to a terminal)");
  if (format_ == "jsonl" && !output_.empty()) {
    file_.open(output_, std::ios::trunc);
    if (!file_) fail("cannot write ", output_);
    out_ = &file_;
  }
}

void EmbeddingWriter::add(nlohmann::json fields, const std::string& row_name,
                          const float* embedding, int64_t dim) {
  if (format_ == "jsonl") {
    fields["embedding"] = std::vector<float>(embedding, embedding + dim);
    *out_ << dump_json(fields) << "\n";
  } else {
    names_.push_back(row_name);
    rows_.insert(rows_.end(), embedding, embedding + dim);
  }
}

size_t EmbeddingWriter::finish(int64_t dim) {
  flush();
  if (format_ != "npy") return 0;
  write_npy(output_, rows_.data(), static_cast<int64_t>(names_.size()), dim);
  const std::filesystem::path list =
      std::filesystem::path(output_).replace_extension(".paths.jsonl");
  std::ofstream l(list, std::ios::trunc);
  for (const auto& p : names_) l << dump_json(p) << "\n";  // a name may hold any byte, "\n" too
  if (!l) fail("cannot write ", list.string());
  std::cerr << "wrote " << output_ << " (" << names_.size() << " x " << dim << " float32) and "
            << list.string() << "\n";
  return names_.size();
}

}  // namespace facenet::cli
