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

namespace {

// The person folders under `root`, sorted; entries that cannot be examined (a symlink loop, a
// vanished entry) go to `on_bad` instead of stopping the walk.
std::vector<fs::path> person_folders(
    const fs::path& root, const std::function<void(const fs::path&, const std::string&)>& on_bad) {
  std::error_code ec;
  if (!fs::is_directory(root, ec))
    fail("--from-dirs: ", root.string(), " is not a directory",
         ec ? " (" + ec.message() + ")" : "");
  std::vector<fs::path> people;
  fs::directory_iterator it(root, ec), end;
  if (ec) fail("--from-dirs: cannot read ", root.string(), ": ", ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) fail("--from-dirs: cannot read ", root.string(), ": ", ec.message());
    std::error_code entry_ec;
    const bool dir = it->is_directory(entry_ec);
    if (entry_ec) {
      on_bad(it->path(), entry_ec.message());
    } else if (dir) {
      people.push_back(it->path());
    } else if (it->is_symlink(entry_ec) && !it->exists(entry_ec)) {
      on_bad(it->path(), "dangling symbolic link");
    }
  }
  // An error while listing ends the iteration (it becomes the end iterator) with ec set:
  // a partial list of people must not pass for the whole.
  if (ec) fail("--from-dirs: cannot read ", root.string(), ": ", ec.message());
  std::sort(people.begin(), people.end());
  return people;
}

}  // namespace

BulkReport enroll_from_dirs(Gallery& gallery, Pipeline& pipeline, const fs::path& root,
                            const RequestOptions& options, const FromDirsOptions& how) {
  BulkReport report;
  auto skip_person = [&](const fs::path& dir, const std::string& why) {
    ++report.skipped_people;
    if (how.on_skip) how.on_skip(dir.string(), dir.string() + ": " + why + "; person not enrolled");
  };
  const std::vector<fs::path> people = person_folders(root, skip_person);
  if (people.empty() && report.skipped_people == 0)
    fail("--from-dirs: ", root.string(), " has no sub-directory (one per person)");
  BulkEnroller bulk = gallery.bulk_enroller(pipeline.spec());
  auto counting_skip = [&](const std::string& input, const std::string& why) {
    ++report.failed_files;
    if (how.on_skip) how.on_skip(input, why);
  };
  const bool crops = options.faces.detector == DetectorKind::kNone;
  for (size_t i = 0; i < people.size(); ++i) {
    const std::string name = people[i].filename().string();
    if (how.on_progress) how.on_progress(i, people.size());
    EncodedRows rows;
    try {
      Gallery::validate_name(name);
      if (!how.reenroll && gallery.has_identity(name)) {
        ++report.already_enrolled;
        if (how.on_note)
          how.on_note(people[i].string() + ": '" + name +
                      "' is already enrolled; skipped (--reenroll replaces it)");
        continue;
      }
      auto results = pipeline.run(file_inputs({people[i].string()}), options);
      rows = rows_of(results, crops, counting_skip);
    } catch (const Error& e) {  // this person only: the batch of the people before stays queued
      skip_person(people[i], e.what());
      continue;
    } catch (const fs::filesystem_error& e) {
      skip_person(people[i], e.what());
      continue;
    }
    if (rows.rows() == 0) {
      skip_person(people[i], "no usable image");
      continue;
    }
    // A failure here is the gallery's (disk full, lock lost): it ends the run, the batches
    // committed before it stay.
    bulk.add(name, rows.embeddings.data(), rows.rows(), rows.sources, "", how.reenroll);
  }
  if (how.on_progress) how.on_progress(people.size(), people.size());
  const BulkProgress done = bulk.finish();
  report.people = done.identities;
  report.embeddings = done.embeddings;
  return report;
}

}  // namespace facenet
