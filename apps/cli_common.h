// Pieces shared by the CLI's subcommand files.
#pragma once

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "engine/pipeline/pipeline.h"

namespace facenet::cli {

inline constexpr const char* kJitterHelp =
    "Encode N randomly jittered copies of each face (dlib's jitter_image: small "
    "rotation/zoom/shift, random mirror) and average them; N times the encoding work, "
    "deterministic per file name (0 = off)";

// A one-line progress indicator on stderr, shown only when stderr is a terminal.
class Progress {
 public:
  Progress(const char* what, bool enabled) : what_(what), enabled_(enabled && isatty(2)) {}
  void update(size_t done, size_t total) {
    if (!enabled_) return;
    std::fprintf(stderr, "\r%s %zu/%zu (%.0f%%)", what_, done, total,
                 100.0 * done / (total ? total : 1));
    std::fflush(stderr);
    shown_ = true;
  }
  // Ends the progress line so that other messages start on their own line.
  void break_line() {
    if (shown_) std::fputc('\n', stderr);
    shown_ = false;
  }
  ~Progress() { break_line(); }

 private:
  const char* what_;
  bool enabled_, shown_ = false;
};

// A finite number >= 0 (CLI11's NonNegativeNumber lets NaN through).
inline const CLI::Validator kFiniteNonNegative(
    [](std::string& s) -> std::string {
      try {
        size_t used = 0;
        const double v = std::stod(s, &used);
        if (used == s.size() && std::isfinite(v) && v >= 0) return {};
      } catch (const std::exception&) {
      }
      return "'" + s + "' is not a finite number >= 0";
    },
    "FINITE >= 0");

// The options every command that reads images shares, and the pipeline they make.
struct PipelineArgs {
  std::string model, device = "cpu", precision = "fp32", align = "none";
  // hog+cnn-retry by measurement (README, "CNN face detector"): the CNN detector costs only
  // where HOG finds nothing, and finds those faces.
  std::string detector = "hog+cnn-retry";
  std::string dlib_models;
  int batch = 64, threads = 0, upsample = 0, jitter = 0;
  int64_t max_pixels = kDefaultMaxPixels;
  PipelineOptions options() const;  // the pipeline options and default request these say
  RequestOptions request() const;
};

// --model (unless `with_model` is false), --device, --precision, --batch, --threads, --align
// (with `default_align` named as the usual choice), --detector, --upsample, --jitter,
// --max-pixels, --dlib-models.
void add_pipeline_options(CLI::App* c, PipelineArgs& a, const char* default_align,
                          bool with_model = true);

// Names a skipped input on stderr without breaking the progress line's layout.
inline auto report_skipped(const char* command, Progress& progress) {
  return [command, &progress](const std::string&, const std::string& reason) {
    progress.break_line();
    std::cerr << "facenet " << command << ": skipped " << reason << "\n";
  };
}

void add_gallery_commands(CLI::App& app, int& exit_code);

}  // namespace facenet::cli
