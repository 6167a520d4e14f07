// One-shot enrolment through the front door: images -> embeddings -> the gallery, in one
// transaction per person, or in committed batches for a folder per person.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "engine/pipeline/pipeline.h"
#include "engine/search/gallery.h"

namespace facenet {

// An input that gave no embedding: its name and why (unreadable, undecodable, no face).
using SkipReporter = std::function<void(const std::string& input, const std::string& reason)>;

// Rows of embeddings with where each came from ("path", or "path#face" for a detected face).
struct EncodedRows {
  std::vector<float> embeddings;     // rows x dim
  std::vector<std::string> sources;  // per row
  size_t rows() const { return sources.size(); }
};

// The embeddings of `results` as rows; each result without one goes to `on_skip`.
EncodedRows rows_of(std::vector<ImageResult>& results, bool crops, const SkipReporter& on_skip);

// Enrols `name` from `inputs` in one transaction. Throws when no input gives an embedding.
Identity enroll_images(Gallery& gallery, Pipeline& pipeline, const std::string& name,
                       std::vector<ImageInput> inputs, const RequestOptions& options,
                       const SkipReporter& on_skip);

struct BulkReport {
  int64_t people = 0, embeddings = 0, failed_files = 0, skipped_people = 0;
  int64_t already_enrolled = 0;  // people left as they were (resumed run, no reenroll)
};

struct FromDirsOptions {
  // Re-encode people already in the gallery and replace their embeddings; without it they are
  // skipped (reported to on_note), so rerunning an interrupted enrolment resumes it.
  bool reenroll = false;
  SkipReporter on_skip;                             // a file or a whole person not enrolled
  std::function<void(const std::string&)> on_note;  // informational (people already there)
  std::function<void(size_t, size_t)> on_progress;  // (done_people, total_people)
};

// Bulk enrolment from a folder per person (`root/<name>/*.jpg`), committed in batches at
// person boundaries, so every person is either fully in the gallery or absent: a crash loses
// at most the last uncommitted batch, and a rerun skips the people already there. A person
// folder that cannot be read, that has no usable image or whose name is not a valid identity
// name is skipped alone (on_skip); the people before and after it are enrolled.
BulkReport enroll_from_dirs(Gallery& gallery, Pipeline& pipeline, const std::filesystem::path& root,
                            const RequestOptions& options, const FromDirsOptions& how);

}  // namespace facenet
