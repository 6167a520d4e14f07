// Enrolment over the front door; see enroll.h.
#include "engine/pipeline/enroll.h"

#include <algorithm>

#include "engine/core/error.h"
#include "engine/image/image_io.h"

namespace facenet {

namespace fs = std::filesystem;

EncodedRows rows_of(std::vector<ImageResult>& results, bool crops, const SkipReporter& on_skip) {
  EncodedRows out;
  for (ImageResult& r : results) {
    if (!r.ok()) {
      if (on_skip) on_skip(r.name, r.error);
      continue;
    }
    if (r.faces.empty()) {
      if (on_skip) on_skip(r.name, "no face found in " + r.name);
      continue;
    }
    for (size_t i = 0; i < r.faces.size(); ++i) {
      out.sources.push_back(crops ? r.name : r.name + "#" + std::to_string(i));
      out.embeddings.insert(out.embeddings.end(), r.faces[i].embedding.begin(),
                            r.faces[i].embedding.end());
    }
  }
  return out;
}

Identity enroll_images(Gallery& gallery, Pipeline& pipeline, const std::string& name,
                       std::vector<ImageInput> inputs, const RequestOptions& options,
                       const SkipReporter& on_skip) {
  auto results = pipeline.run(std::move(inputs), options);
  const EncodedRows rows = rows_of(results, options.faces.detector == DetectorKind::kNone, on_skip);
  if (rows.rows() == 0) fail("no usable image to enrol '", name, "'");
  return gallery.enroll(name, pipeline.spec(), rows.embeddings.data(), rows.rows(), rows.sources);
}

BulkReport enroll_from_dirs(Gallery& gallery, Pipeline& pipeline, const fs::path& root,
                            const RequestOptions& options, const SkipReporter& on_skip,
                            const std::function<void(size_t, size_t)>& on_progress) {
  if (!fs::is_directory(root)) fail("--from-dirs: ", root.string(), " is not a directory");
  std::vector<fs::path> people;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory()) people.push_back(e.path());
  std::sort(people.begin(), people.end());
  if (people.empty())
    fail("--from-dirs: ", root.string(), " has no sub-directory (one per person)");
  BulkReport report;
  BulkEnroller bulk = gallery.bulk_enroller(pipeline.spec());
  auto counting_skip = [&](const std::string& input, const std::string& why) {
    ++report.failed_files;
    if (on_skip) on_skip(input, why);
  };
  const bool crops = options.faces.detector == DetectorKind::kNone;
  for (size_t i = 0; i < people.size(); ++i) {
    auto results = pipeline.run(file_inputs({people[i].string()}), options);
    const EncodedRows rows = rows_of(results, crops, counting_skip);
    if (rows.rows() == 0) {
      ++report.skipped_people;
      if (on_skip)
        on_skip(people[i].string(), people[i].string() + ": no usable image; person not enrolled");
    } else {
      bulk.add(people[i].filename().string(), rows.embeddings.data(), rows.rows(), rows.sources);
    }
    if (on_progress) on_progress(i + 1, people.size());
  }
  const BulkProgress done = bulk.finish();
  report.people = done.identities;
  report.embeddings = done.embeddings;
  return report;
}

}  // namespace facenet
