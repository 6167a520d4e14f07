// facenet: the command-line front end. Parses arguments and prints; all logic is in engine/.
#include <fstream>
#include <iomanip>

#include "apps/cli_common.h"
#include "apps/embedding_writer.h"
#include "apps/face_json.h"
#include "apps/openmp_defaults.h"
#ifdef FACENET_HAS_SERVE
#include "apps/serve/cli_serve.h"
#endif
#ifdef FACENET_HAS_DLIB
#include "apps/cli_faces.h"
#endif
#include "engine/backend/backend.h"
#include "engine/core/error.h"
#include "engine/face/face.h"
#include "engine/model/convert_openface.h"
#include "engine/model/model.h"
#include "engine/model/onnx_export.h"
#include "engine/pipeline/pipeline.h"
#include "tools/bench/encode_bench.h"
#include "tools/bench/triplet_bench.h"

namespace fs = std::filesystem;
using namespace facenet;
using facenet::cli::EmbeddingWriter;

namespace {

std::vector<int> parse_int_list(const std::string& s, const std::string& what) {
  std::vector<int> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    try {
      size_t used = 0;
      out.push_back(std::stoi(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      fail(what, ": '", item, "' is not an integer (expected a comma-separated list like 1,16,64)");
    }
  }
  return out;
}

// ---- convert -------------------------------------------------------------------------------
struct ConvertArgs {
  std::string dir, variant = "openface", output;
};

void add_convert(CLI::App& app) {
  auto* convert =
      app.add_subcommand("convert", "Convert published weights into a facenet model file");
  convert->require_subcommand(1);
  auto args = std::make_shared<ConvertArgs>();
  auto* csv = convert->add_subcommand(
      "openface-csv",
      "Keras-OpenFace CSV export of nn4.small2.v1 (one CSV per tensor) -> safetensors model");
  csv->add_option("dir", args->dir, "Directory holding the 226 CSV files")->required();
  csv->add_option("--variant", args->variant,
                  "Graph variant: openface (faithful Torch graph: LRN, L2 pooling) or coursera "
                  "(deeplearning.ai Keras port: no LRN, average pooling)")
      ->check(CLI::IsMember({"openface", "coursera"}))
      ->capture_default_str();
  csv->add_option("-o,--output", args->output, "Model file to write (.safetensors)")->required();
  csv->callback([args] {
    std::vector<std::string> unused;
    Model m = convert_openface_csv(args->dir, parse_nn4_variant(args->variant), &unused);
    save_model(args->output, m);
    const ParamCounts c = count_params(m);
    std::cerr << "wrote " << args->output << ": " << m.graph.name << " (" << m.graph.variant
              << "), " << m.tensors.size() << " tensors, " << c.learned << " learned parameters (+"
              << c.running_stats << " BatchNorm running stats)\n";
    if (!unused.empty()) {
      std::cerr << "note: " << unused.size() << " file(s) in " << args->dir
                << " are not used by the graph:";
      for (const auto& u : unused) std::cerr << " " << u;
      std::cerr << "\n";
    }
  });
}

// ---- export ------------------------------------------------------------------------------
void add_export(CLI::App& app) {
  auto* exp = app.add_subcommand("export", "Export a facenet model file to another format");
  exp->require_subcommand(1);
  auto model = std::make_shared<std::string>();
  auto output = std::make_shared<std::string>();
  auto* onnx = exp->add_subcommand(
      "onnx", "Write the network as a standard ONNX model (for ONNX Runtime, OpenVINO, ...)");
  onnx->add_option("model", *model, "Model file (.safetensors)")->required();
  onnx->add_option("-o,--output", *output, "ONNX file to write (.onnx)")->required();
  onnx->footer(
      "ONNX opset 13, IR version 8, weights stored in the file (float32). Input: the graph's\n"
      "input name, float32 [N, C, H, W] after the model's normalisation (`facenet info` shows\n"
      "it; it is also stored as metadata \"facenet.preprocess\"), N any batch size. Output:\n"
      "the graph's output name, float32 [N, D]: the same embeddings as `facenet encode` from\n"
      "the same input. BatchNorm stays a BatchNormalization node (runtimes fold it);\n"
      "L2 pooling is written as sqrt(k^2 * AveragePool(x^2)). Graphs ONNX cannot express\n"
      "exactly (e.g. an LRN of even size) are refused with the node named.");
  onnx->callback([model, output] {
    export_onnx_file(*model, *output);
    std::cerr << "wrote " << *output << "\n";
  });
}

// ---- info ----------------------------------------------------------------------------------
void add_info(CLI::App& app) {
  auto* info = app.add_subcommand("info", "Print a model's graph as a table with totals");
  auto path = std::make_shared<std::string>();
  info->add_option("model", *path, "Model file (.safetensors)")->required();
  info->callback([path] { std::cout << model_summary(load_model(*path)); });
}

// ---- encode --------------------------------------------------------------------------------
struct EncodeArgs {
  cli::PipelineArgs p;
  std::string format = "jsonl", output;
  std::vector<std::string> inputs;
};

int run_encode(const EncodeArgs& a) {
  EmbeddingWriter writer(a.format, a.output);
  Pipeline pipeline(a.p.model, a.p.options());
  const RequestOptions request = a.p.request();
  const bool crops = request.faces.detector == DetectorKind::kNone;
  if (!crops) model_alignment(pipeline.model().graph);  // fail early: the model names none
  auto inputs = file_inputs(a.inputs);
  if (inputs.empty()) fail("no images found in the given inputs");
  const size_t total = inputs.size();
  const int64_t dim = pipeline.dim();
  cli::Progress progress(crops ? "encoding" : "encoding photos",
                         total > static_cast<size_t>(a.p.batch));
  size_t failed = 0, faces = 0, no_face = 0;
  pipeline.run(
      std::move(inputs), request,
      [&](ImageResult& r) {
        if (!r.ok()) {
          ++failed;
          progress.break_line();
          std::cerr << "facenet encode: skipped " << r.error << "\n";
          return;
        }
        if (r.faces.empty()) {
          ++no_face;
          progress.break_line();
          std::cerr << "facenet encode: no face found in " << r.name << "\n";
        }
        for (size_t i = 0; i < r.faces.size(); ++i, ++faces) {
          const FaceResult& f = r.faces[i];
          nlohmann::json line = {{"image", r.name}};
          line.update(cli::face_position_json(i, f, crops));
          writer.add(line, crops ? r.name : r.name + "#" + std::to_string(i), f.embedding.data(),
                     dim);
        }
        writer.flush();  // what is done is kept even if a later input fails hard
      },
      [&](size_t done, size_t n) { progress.update(done, n); });
  progress.break_line();
  writer.finish(dim);
  if (crops) {
    if (failed)
      std::cerr << "facenet encode: " << failed << " of " << total
                << " file(s) could not be encoded; " << faces << " encoded\n";
  } else {
    std::cerr << "facenet encode: " << total << " photo(s), " << faces << " face(s) encoded, "
              << no_face << " without a face, " << failed << " unreadable\n";
  }
  if (failed && failed == total) return 2;  // nothing could be done
  return failed ? 1 : 0;
}

void add_encode(CLI::App& app, int& exit_code) {
  auto* enc = app.add_subcommand(
      "encode", "Encode faces (aligned crops, or raw photos with --align) into embeddings");
  auto a = std::make_shared<EncodeArgs>();
  cli::add_pipeline_options(enc, a->p, "none");
  enc->add_option("--format", a->format,
                  "jsonl: one {\"image\", \"embedding\"} line per image; npy: N x D float32 .npy "
                  "plus <out>.paths.jsonl naming the rows, one JSON string per line")
      ->check(CLI::IsMember({"jsonl", "npy"}))
      ->capture_default_str();
  enc->add_option("-o,--output", a->output, "Output file (default: jsonl on stdout)");
  enc->add_option("inputs", a->inputs, "Image files and/or directories (searched recursively)")
      ->required();
  enc->footer(
      "Input rule: 8-bit decode, BGR->RGB, resize to the model input only if needed, then the\n"
      "model's normalisation. Unreadable files are named on stderr, the others are still\n"
      "encoded, and the exit status is 1. With --align, each output line is one face:\n"
      "{\"image\", \"face\", \"box\": [left, top, right, bottom], \"embedding\"}; a photo without "
      "a\n"
      "face is named on stderr (exit status stays 0). nn4.small2 embeddings are\n"
      "L2-normalised; dlib ResNet ones are dlib's raw descriptors (match: L2 <= 0.6).\n"
      "File names are JSON strings; a byte that is not valid UTF-8 is written as \\udcXX\n"
      "(Python: os.fsencode(json.loads(line)[\"image\"]) gives the name's bytes back).\n"
      "A directory entry that cannot be read (permissions, a broken symbolic link, a link\n"
      "loop), a truncated or corrupt image and an image above --max-pixels are skipped and\n"
      "named on stderr (exit status 1).");
  enc->callback([a, &exit_code] { exit_code = run_encode(*a); });
}

// ---- bench ---------------------------------------------------------------------------------
void add_bench_triplet(CLI::App* bench) {
  auto* tri = bench->add_subcommand(
      "triplet", "Triplet loss + gradient per batch size and mining mode, vs a PyTorch peer");
  auto o = std::make_shared<TripletBenchOptions>();
  auto batches = std::make_shared<std::string>("256,1024,2048,4096,8192");
  auto modes = std::make_shared<std::string>("batch_all,batch_hard,semi_hard");
  auto no_peer = std::make_shared<bool>(false);
  tri->add_option("--batch", *batches, "Comma-separated batch sizes B")->capture_default_str();
  tri->add_option("--dim", o->dim, "Embedding dimension d")->capture_default_str();
  tri->add_option("--modes", *modes, "Comma-separated: batch_all, batch_hard, semi_hard")
      ->capture_default_str();
  tri->add_option("--device", o->device, "cpu | cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  tri->add_option("--margin", o->margin, "Margin alpha")->capture_default_str();
  tri->add_option("--per-class", o->per_class, "Samples per identity in a batch")
      ->capture_default_str();
  tri->add_option("--repeats", o->repeats, "Timed repeats")->capture_default_str();
  tri->add_option("--warmup", o->warmup, "Untimed warm-up runs")->capture_default_str();
  tri->add_option("--threads", o->threads, "CPU threads for us and the peer (0 = all cores)")
      ->capture_default_str();
  tri->add_flag("--deterministic", o->deterministic, "cuda: fixed-order reductions");
  tri->add_flag("--check", o->check, "cuda: also run the CPU reference and report the difference");
  tri->add_flag("--no-peer", *no_peer, "Skip the PyTorch peer (tools/peer_triplet_torch.py)");
  tri->callback([=] {
    o->batches.clear();
    for (int b : parse_int_list(*batches, "--batch")) o->batches.push_back(b);
    o->modes.clear();
    std::stringstream ss(*modes);
    for (std::string m; std::getline(ss, m, ',');) o->modes.push_back(parse_mining(m));
    o->peer = !*no_peer;
    std::cout << run_triplet_bench(*o).dump(2) << "\n";
  });
}

void add_bench(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks printing JSON");
  bench->require_subcommand(1);
  auto* enc = bench->add_subcommand("encode", "Encoder throughput and latency per batch size");
  auto o = std::make_shared<EncodeBenchOptions>();
  auto device = std::make_shared<std::string>("cpu");
  auto batches = std::make_shared<std::string>("1,16,64");
  auto model = std::make_shared<std::string>();
  auto no_peer = std::make_shared<bool>(false);
  enc->add_option("--model", *model, "Model file (.safetensors)")->required();
  enc->add_option("--device", *device, "cpu | cuda")->capture_default_str();
  enc->add_option("--batch", *batches, "Comma-separated batch sizes")->capture_default_str();
  enc->add_option("--repeats", o->repeats, "Timed repeats per batch size")->capture_default_str();
  enc->add_option("--warmup", o->warmup, "Untimed warm-up runs")->capture_default_str();
  enc->add_option("--threads", o->threads, "CPU threads (0 = all cores)")->capture_default_str();
  enc->add_option("--micro-batch", o->micro_batch,
                  "cpu: images per internal pass (0 = the backend's default)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  auto peers = std::make_shared<std::string>("pytorch,onnxruntime,openvino");
  enc->add_option("--peers", *peers,
                  "Comma-separated peers timed in the same run: pytorch (tools/peer_torch.py, "
                  "the model file), onnxruntime and openvino (tools/peer_onnx.py, on this "
                  "model exported with `facenet export onnx`; cpu only)")
      ->capture_default_str();
  enc->add_flag("--no-peer", *no_peer, "Time no peer");
  enc->add_option("--precision", o->precision,
                  "fp32 | bf16 (cpu: where the CPU has bf16 instructions) | fp16 (cuda)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->capture_default_str();
  enc->add_option("--layout", o->layout, "cuda only: auto | nchw | nhwc")
      ->check(CLI::IsMember({"auto", "nchw", "nhwc"}))
      ->capture_default_str();
  auto no_e2e = std::make_shared<bool>(false);
  enc->add_flag("--no-end-to-end", *no_e2e, "cuda: skip the JPEG-bytes-to-embeddings timing");
  enc->callback([=] {
    o->end_to_end = !*no_e2e;
    o->model_path = *model;
    o->device = parse_device(*device);
    o->batches = parse_int_list(*batches, "--batch");
    o->peers.clear();
    std::stringstream ss(*peers);
    for (std::string p; !*no_peer && std::getline(ss, p, ',');) {
      if (p != "pytorch" && p != "onnxruntime" && p != "openvino")
        fail("--peers: unknown peer '", p, "' (expected pytorch, onnxruntime, openvino)");
      o->peers.push_back(p);
    }
    std::cout << run_encode_bench(*o).dump(2) << "\n";
  });
  add_bench_triplet(bench);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && cli::is_pipeline_command(argv[1])) cli::apply_openmp_defaults(argv);
  CLI::App app{
      "facenet: face embeddings (FaceNet-style encoders), verification and recognition.\n"
      "Models are safetensors files made by `facenet convert`."};
  app.require_subcommand(1);
  int exit_code = 0;
  add_convert(app);
  add_info(app);
  add_export(app);
  add_encode(app, exit_code);
  add_bench(app);
  cli::add_gallery_commands(app, exit_code);
#ifdef FACENET_HAS_SERVE
  cli::add_serve_command(app, exit_code);
#endif
#ifdef FACENET_HAS_DLIB
  cli::add_face_commands(app, exit_code);
#endif
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version are successes; every argument error is "nothing could be done" (2),
    // not CLI11's own codes (105, 106, 109, ...).
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const Error& e) {
    std::cerr << "facenet: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "facenet: unexpected error: " << e.what() << "\n";
    return 3;
  }
  return exit_code;
}
