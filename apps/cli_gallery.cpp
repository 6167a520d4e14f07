// CLI: gallery management, enrolment, verification and identification.
#include <fstream>

#include "apps/cli_common.h"
#include "apps/face_json.h"
#include "engine/core/error.h"
#include "engine/pipeline/enroll.h"
#include "engine/search/gallery.h"
#include "engine/search/recognition.h"

namespace facenet::cli {

namespace fs = std::filesystem;

namespace {

// An identity's stored metadata as JSON; text that does not parse (a damaged or foreign file)
// is shown as the string it is rather than ending the listing.
nlohmann::json metadata_json(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? nlohmann::json(text) : j;
}

struct Common {
  std::string gallery;
  PipelineArgs p;
  double threshold = -1;  // < 0: the model's own (preprocess.threshold), else 0.7
};

double threshold_for(const Common& o, const Pipeline& p) {
  return o.threshold >= 0 ? o.threshold : p.default_threshold();
}

void add_gallery_option(CLI::App* c, Common& o) {
  c->add_option("--gallery", o.gallery, "Gallery file (SQLite)")->required();
}

void add_model_options(CLI::App* c, Common& o, const char* default_pick) {
  add_pipeline_options(c, o.p, "none");
  c->get_option("--align")->description(
      std::string("none: images are aligned face crops; largest | all: raw photos, "
                  "faces detected and aligned as the model file says (") +
      default_pick + " is the usual choice here)");
}

void add_threshold_option(CLI::App* c, Common& o, const char* what) {
  c->add_option("--threshold", o.threshold,
                std::string(what) + " (plain L2; default: the model's own, else 0.7)")
      ->check(kFiniteNonNegative);
}

void print_stats(const GalleryStats& s, const std::string& path) {
  nlohmann::json j = {
      {"gallery", path},
      {"identities", s.identities},
      {"embeddings", s.embeddings},
      {"model", s.spec.model.empty() ? nlohmann::json() : nlohmann::json(s.spec.model)},
      {"dim", s.spec.dim},
      {"file_bytes", s.file_bytes},
      {"schema_version", s.schema_version},
      {"created_at", s.created_at}};
  std::cout << j.dump(2) << "\n";
}

// The report of `gallery check`: JSON with --json, else a line per finding.
void print_check(const GalleryCheck& c, const std::string& path, bool json) {
  if (json) {
    nlohmann::json damaged = nlohmann::json::array();
    for (const DamagedRow& d : c.damaged)
      damaged.push_back({{"embedding_id", d.embedding_id},
                         {"identity_id", d.identity_id},
                         {"identity", d.identity},
                         {"problem", d.problem}});
    nlohmann::json j = {{"gallery", path},
                        {"ok", c.ok()},
                        {"sqlite", c.sqlite},
                        {"rows", c.rows},
                        {"unverified", c.unverified},
                        {"damaged", damaged}};
    if (!c.error.empty()) j["error"] = c.error;
    // Names come from a possibly damaged file: replace invalid UTF-8 rather than throw.
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return;
  }
  std::cout << "gallery " << path << ": " << (c.ok() ? "ok" : "DAMAGED") << "\n";
  std::cout << "  sqlite quick_check: " << c.sqlite << "\n";
  std::cout << "  embeddings read: " << c.rows << ", damaged: " << c.damaged.size()
            << ", without checksum: " << c.unverified << "\n";
  for (const DamagedRow& d : c.damaged)
    std::cout << "  embedding " << d.embedding_id << " of identity " << d.identity_id << " ('"
              << d.identity << "') " << d.problem << "\n";
  if (!c.error.empty()) std::cout << "  check stopped: " << c.error << "\n";
}

void add_gallery(CLI::App& app, int& exit_code) {
  auto* g = app.add_subcommand("gallery", "Create, list, inspect and edit a gallery file");
  g->require_subcommand(1);
  auto o = std::make_shared<Common>();

  auto* create = g->add_subcommand("create", "Create an empty gallery (SQLite, WAL)");
  add_gallery_option(create, *o);
  create->callback([o] {
    Gallery gal = Gallery::create(o->gallery);
    print_stats(gal.stats(), o->gallery);
  });

  auto* list = g->add_subcommand("list", "List identities as JSON lines");
  add_gallery_option(list, *o);
  list->callback([o] {
    Gallery gal = Gallery::open(o->gallery, GalleryMode::kRead);
    for (const Identity& id : gal.list_identities())
      std::cout << dump_json(nlohmann::json({{"id", id.id},
                                             {"name", id.name},
                                             {"embeddings", id.embeddings},
                                             {"created_at", id.created_at},
                                             {"metadata", metadata_json(id.metadata)}}))
                << "\n";
  });

  auto* remove = g->add_subcommand("remove", "Remove identities and their embeddings");
  add_gallery_option(remove, *o);
  auto names = std::make_shared<std::vector<std::string>>();
  remove->add_option("--name", *names, "Identity to remove (repeatable)")->required();
  remove->callback([o, names] {
    Gallery gal = Gallery::open(o->gallery, GalleryMode::kWrite);
    for (const auto& n : *names) gal.find_identity(n);  // all or nothing: unknown names first
    for (const auto& n : *names) {
      const int64_t gone = gal.remove_identity(n);
      std::cout << dump_json(nlohmann::json({{"removed", n}, {"embeddings", gone}})) << "\n";
    }
  });

  auto* check = g->add_subcommand(
      "check",
      "Verify a gallery: SQLite's structural check plus every embedding's checksum "
      "(exit 0 clean, 2 damaged)");
  add_gallery_option(check, *o);
  auto json = std::make_shared<bool>(false);
  check->add_flag("--json", *json, "Print the report as one JSON object");
  check->callback([o, json, &exit_code] {
    Gallery gal = Gallery::open(o->gallery, GalleryMode::kRead);
    const GalleryCheck c = gal.check();
    print_check(c, o->gallery, *json);
    exit_code = c.ok() ? 0 : 2;
  });

  auto* stats = g->add_subcommand("stats", "Counts, model, dimension and file size as JSON");
  add_gallery_option(stats, *o);
  stats->callback([o] {
    Gallery gal = Gallery::open(o->gallery, GalleryMode::kRead);
    print_stats(gal.stats(), o->gallery);
  });
}

void add_enroll(CLI::App& app, int& exit_code) {
  auto* e = app.add_subcommand(
      "enroll",
      "Enrol a person from images (one-shot: nothing is retrained), or many people "
      "from a folder per person");
  auto o = std::make_shared<Common>();
  auto name = std::make_shared<std::string>();
  auto from_dirs = std::make_shared<std::string>();
  auto images = std::make_shared<std::vector<std::string>>();
  auto create = std::make_shared<bool>(false);
  auto reenroll = std::make_shared<bool>(false);
  add_gallery_option(e, *o);
  add_model_options(e, *o, "largest");
  e->add_option("--name", *name, "The person's name");
  e->add_option("--from-dirs", *from_dirs,
                "Bulk: <root>/<name>/<images>, one sub-directory per person, committed in "
                "batches (a crash keeps every committed batch)");
  e->add_flag("--create", *create, "Create the gallery when it does not exist");
  e->add_flag("--reenroll", *reenroll,
              "With --from-dirs: encode people already in the gallery again and replace their "
              "embeddings (without it a rerun skips them, resuming an interrupted run)");
  e->add_option("images", *images, "Images or directories of this person");
  e->callback([=, &exit_code] {
    if (from_dirs->empty() == (name->empty() || images->empty()))
      fail("enroll needs either --name <name> <images...> or --from-dirs <root>");
    if (*reenroll && from_dirs->empty()) fail("--reenroll goes with --from-dirs");
    if (!name->empty()) Gallery::validate_name(*name);  // before the model loads
    if (*create && !fs::exists(o->gallery)) Gallery::create(o->gallery);
    Gallery gal = Gallery::open(o->gallery, GalleryMode::kWrite);
    Pipeline pipeline(o->p.model, o->p.options());
    Progress progress("enrolling", true);
    auto on_error = report_skipped("enroll", progress);
    size_t failures = 0;
    auto counting = [&](const std::string& input, const std::string& why) {
      ++failures;
      on_error(input, why);
    };
    if (!from_dirs->empty()) {
      FromDirsOptions how;
      how.reenroll = *reenroll;
      how.on_skip = on_error;
      how.on_note = [&](const std::string& note) {
        progress.break_line();
        std::cerr << "facenet enroll: " << note << "\n";
      };
      how.on_progress = [&](size_t d, size_t t) { progress.update(d, t); };
      const BulkReport r = enroll_from_dirs(gal, pipeline, *from_dirs, o->p.request(), how);
      progress.break_line();
      std::cout << nlohmann::json({{"people", r.people},
                                   {"embeddings", r.embeddings},
                                   {"already_enrolled", r.already_enrolled},
                                   {"failed_files", r.failed_files},
                                   {"skipped_people", r.skipped_people}})
                       .dump()
                << "\n";
      if (r.failed_files || r.skipped_people) exit_code = 1;
      return;
    }
    const Identity id =
        enroll_images(gal, pipeline, *name, file_inputs(*images), o->p.request(), counting);
    std::cout << dump_json(nlohmann::json(
                     {{"name", id.name}, {"id", id.id}, {"embeddings", id.embeddings}}))
              << "\n";
    if (failures) exit_code = 1;
  });
}

// Runs the probe images through the pipeline (skipped ones are named on stderr and counted).
std::vector<ImageResult> run_probes(Pipeline& pipeline, const RequestOptions& request,
                                    std::vector<ImageInput> inputs, const char* command,
                                    size_t& skipped) {
  Progress progress(command, false);
  auto report = report_skipped(command, progress);
  std::vector<ImageResult> out;
  pipeline.run(std::move(inputs), request, [&](ImageResult& r) {
    if (!r.ok() || r.faces.empty()) {
      ++skipped;
      report(r.name, r.ok() ? "no face found in " + r.name : r.error);
      return;
    }
    out.push_back(std::move(r));
  });
  return out;
}

void add_verify(CLI::App& app, int& exit_code) {
  auto* v = app.add_subcommand("verify", "1:1: is this image the claimed person? (JSON)");
  auto o = std::make_shared<Common>();
  auto name = std::make_shared<std::string>();
  auto image = std::make_shared<std::string>();
  add_gallery_option(v, *o);
  add_model_options(v, *o, "largest");
  v->add_option("--name", *name, "Claimed identity")->required();
  add_threshold_option(v, *o, "Match when the distance is <= this");
  v->add_option("image", *image, "Probe image")->required();
  v->footer(
      "Prints {\"name\", \"distance\", \"threshold\", \"match\"}: distance is the plain L2\n"
      "(not squared) distance to the person's nearest enrolled embedding.");
  v->callback([=, &exit_code] {
    Gallery gal = Gallery::open(o->gallery, GalleryMode::kRead);
    Pipeline pipeline(o->p.model, o->p.options());
    gal.find_identity(*name);  // unknown name: fail before encoding
    size_t skipped = 0;
    const auto probe =
        run_probes(pipeline, o->p.request(), file_inputs({*image}), "verify", skipped);
    if (probe.empty()) fail("verify: no usable face in ", *image);
    std::cout << dump_json(verify(gal, pipeline.spec(), *name, probe[0].faces[0].embedding.data(),
                                  threshold_for(*o, pipeline))
                               .to_json())
              << "\n";
    exit_code = 0;
  });
}

void add_identify(CLI::App& app, int& exit_code) {
  auto* id = app.add_subcommand("identify", "1:K: who is in each image? (JSON lines)");
  auto o = std::make_shared<Common>();
  auto k = std::make_shared<int>(5);
  auto images = std::make_shared<std::vector<std::string>>();
  add_gallery_option(id, *o);
  add_model_options(id, *o, "all");
  id->add_option("--k", *k, "Identities listed per probe (best embedding per identity)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  add_threshold_option(id, *o, "Best identity only when its distance is <= this, else \"unknown\"");
  id->add_option("images", *images, "Probe images or directories")->required();
  id->footer(
      "One JSON line per probe (per face with --align): image, [face, box], identity,\n"
      "distance (plain L2), threshold and the top-k identities with their distances.");
  id->callback([=, &exit_code] {
    Gallery gal = Gallery::open(o->gallery, GalleryMode::kRead);
    Pipeline pipeline(o->p.model, o->p.options());
    pipeline.set_gallery(gal.load_for_search(pipeline.spec().model));
    RequestOptions request = o->p.request();
    request.task = Task::kIdentify;
    request.k = *k;
    request.threshold = threshold_for(*o, pipeline);
    const bool crops = request.faces.detector == DetectorKind::kNone;
    size_t skipped = 0;
    std::vector<ImageInput> inputs = file_inputs(*images);
    const size_t probes = inputs.size();
    for (const ImageResult& r :
         run_probes(pipeline, request, std::move(inputs), "identify", skipped)) {
      for (size_t i = 0; i < r.faces.size(); ++i) {
        nlohmann::json line = {{"image", r.name}};
        line.update(face_position_json(i, r.faces[i], crops));
        line.update(r.faces[i].match->to_json(request.threshold));
        std::cout << dump_json(line) << "\n";
      }
    }
    exit_code = skipped == 0 ? 0 : skipped == probes ? 2 : 1;  // 2: no probe could be used
  });
}

}  // namespace

void add_gallery_commands(CLI::App& app, int& exit_code) {
  add_gallery(app, exit_code);
  add_enroll(app, exit_code);
  add_verify(app, exit_code);
  add_identify(app, exit_code);
}

}  // namespace facenet::cli
