// CLI: gallery management, enrolment, verification and identification.
#include <fstream>

#include "apps/cli_common.h"
#include "engine/error.h"
#include "engine/gallery.h"
#include "engine/recognition.h"

namespace facenet::cli {

namespace fs = std::filesystem;

namespace {

struct Common {
  std::string gallery, model, device = "cpu";
  double threshold = kDefaultThreshold;
};

void add_gallery_option(CLI::App* c, Common& o) {
  c->add_option("--gallery", o.gallery, "Gallery file (SQLite)")->required();
}

void add_model_options(CLI::App* c, Common& o) {
  c->add_option("--model", o.model, "Model file (.safetensors)")->required();
  c->add_option("--device", o.device, "cpu | cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
}

BackendOptions backend_options(const Common& o) {
  BackendOptions b;
  b.device = parse_device(o.device);
  return b;
}

void print_stats(const GalleryStats& s, const std::string& path) {
  nlohmann::json j = {{"gallery", path},
                      {"identities", s.identities},
                      {"embeddings", s.embeddings},
                      {"model", s.spec.model.empty() ? nlohmann::json() : nlohmann::json(s.spec.model)},
                      {"dim", s.spec.dim},
                      {"file_bytes", s.file_bytes},
                      {"schema_version", s.schema_version},
                      {"created_at", s.created_at}};
  std::cout << j.dump(2) << "\n";
}

void add_gallery(CLI::App& app) {
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
      std::cout << nlohmann::json({{"id", id.id},
                                   {"name", id.name},
                                   {"embeddings", id.embeddings},
                                   {"created_at", id.created_at},
                                   {"metadata", nlohmann::json::parse(id.metadata)}})
                       .dump()
                << "\n";
  });

  auto* remove = g->add_subcommand("remove", "Remove identities and their embeddings");
  add_gallery_option(remove, *o);
  auto names = std::make_shared<std::vector<std::string>>();
  remove->add_option("--name", *names, "Identity to remove (repeatable)")->required();
  remove->callback([o, names] {
    Gallery gal = Gallery::open(o->gallery, GalleryMode::kWrite);
    for (const auto& n : *names) {
      const int64_t gone = gal.remove_identity(n);
      std::cout << nlohmann::json({{"removed", n}, {"embeddings", gone}}).dump() << "\n";
    }
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
      "enroll", "Enrol a person from images (one-shot: nothing is retrained), or many people "
                "from a folder per person");
  auto o = std::make_shared<Common>();
  auto name = std::make_shared<std::string>();
  auto from_dirs = std::make_shared<std::string>();
  auto images = std::make_shared<std::vector<std::string>>();
  auto create = std::make_shared<bool>(false);
  add_gallery_option(e, *o);
  add_model_options(e, *o);
  e->add_option("--name", *name, "The person's name");
  e->add_option("--from-dirs", *from_dirs,
                "Bulk: <root>/<name>/<images>, one sub-directory per person, committed in "
                "batches (a crash keeps every committed batch)");
  e->add_flag("--create", *create, "Create the gallery when it does not exist");
  e->add_option("images", *images, "Images or directories of this person");
  e->callback([=, &exit_code] {
    if (from_dirs->empty() == (name->empty() || images->empty()))
      fail("enroll needs either --name <name> <images...> or --from-dirs <root>");
    if (*create && !fs::exists(o->gallery)) Gallery::create(o->gallery);
    Gallery gal = Gallery::open(o->gallery, GalleryMode::kWrite);
    Encoder encoder(o->model, backend_options(*o));
    Progress progress("enrolling", true);
    auto on_error = report_skipped("enroll", progress);
    size_t failures = 0;
    auto counting = [&](const fs::path& p, const std::string& why) {
      ++failures;
      on_error(p, why);
    };
    if (!from_dirs->empty()) {
      const BulkReport r = enroll_from_dirs(gal, encoder, *from_dirs, on_error,
                                            [&](size_t d, size_t t) { progress.update(d, t); });
      progress.break_line();
      std::cout << nlohmann::json({{"people", r.people},
                                   {"embeddings", r.embeddings},
                                   {"failed_files", r.failed_files},
                                   {"skipped_people", r.skipped_people}})
                       .dump()
                << "\n";
      if (r.failed_files || r.skipped_people) exit_code = 1;
      return;
    }
    const Identity id = enroll_images(gal, encoder, *name, expand_inputs(*images), counting);
    std::cout << nlohmann::json({{"name", id.name}, {"id", id.id}, {"embeddings", id.embeddings}})
                     .dump()
              << "\n";
    if (failures) exit_code = 1;
  });
}

// Encodes the probe images; returns the embeddings and the images they belong to.
std::vector<float> encode_probes(Encoder& encoder, const std::vector<std::string>& args,
                                 std::vector<fs::path>& encoded, const char* command,
                                 size_t& failures) {
  Progress progress(command, false);
  auto on_error = report_skipped(command, progress);
  const auto files = expand_inputs(args);
  std::vector<float> emb = encoder.encode(files, encoded, [&](const fs::path& p, const std::string& w) {
    ++failures;
    on_error(p, w);
  });
  return emb;
}

void add_verify(CLI::App& app, int& exit_code) {
  auto* v = app.add_subcommand("verify", "1:1: is this image the claimed person? (JSON)");
  auto o = std::make_shared<Common>();
  auto name = std::make_shared<std::string>();
  auto image = std::make_shared<std::string>();
  add_gallery_option(v, *o);
  add_model_options(v, *o);
  v->add_option("--name", *name, "Claimed identity")->required();
  v->add_option("--threshold", o->threshold, "Match when the plain L2 distance is <= this")
      ->capture_default_str();
  v->add_option("image", *image, "Probe image")->required();
  v->footer("Prints {\"name\", \"distance\", \"threshold\", \"match\"}: distance is the plain L2\n"
            "(not squared) distance to the person's nearest enrolled embedding.");
  v->callback([=, &exit_code] {
    Gallery gal = Gallery::open(o->gallery, GalleryMode::kRead);
    Encoder encoder(o->model, backend_options(*o));
    gal.find_identity(*name);  // unknown name: fail before encoding
    std::vector<fs::path> encoded;
    size_t failures = 0;
    const auto emb = encode_probes(encoder, {*image}, encoded, "verify", failures);
    if (encoded.empty()) fail("verify: the probe image could not be used");
    std::cout << verify(gal, encoder.spec(), *name, emb.data(), o->threshold).to_json().dump()
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
  add_model_options(id, *o);
  id->add_option("--k", *k, "Identities listed per probe (best embedding per identity)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  id->add_option("--threshold", o->threshold,
                 "Best identity only when its plain L2 distance is <= this, else \"unknown\"")
      ->capture_default_str();
  id->add_option("images", *images, "Probe images or directories")->required();
  id->callback([=, &exit_code] {
    Gallery gal = Gallery::open(o->gallery, GalleryMode::kRead);
    Encoder encoder(o->model, backend_options(*o));
    Identifier identifier(gal.load_all(encoder.spec().model), parse_device(o->device));
    std::vector<fs::path> encoded;
    size_t failures = 0;
    const auto emb = encode_probes(encoder, *images, encoded, "identify", failures);
    const auto results =
        identifier.identify(emb.data(), static_cast<int64_t>(encoded.size()), *k, o->threshold);
    for (size_t i = 0; i < results.size(); ++i)
      std::cout << results[i].to_json(encoded[i].string(), o->threshold).dump() << "\n";
    exit_code = failures ? 1 : 0;
  });
}

}  // namespace

void add_gallery_commands(CLI::App& app, int& exit_code) {
  add_gallery(app);
  add_enroll(app, exit_code);
  add_verify(app, exit_code);
  add_identify(app, exit_code);
}

}  // namespace facenet::cli
