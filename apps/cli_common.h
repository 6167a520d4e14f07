// Pieces shared by the CLI's subcommand files.
#pragma once

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

namespace facenet::cli {

inline constexpr const char* kCnnRetryHelp =
    "With --align: where the HOG detector finds no face, retry with dlib's CNN detector "
    "(finds profile, blurred and occluded faces; ~0.1 s for a 250x250 photo on 2 cores, growing "
    "with the pixel count)";
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

// Names a skipped file on stderr without breaking the progress line's layout.
inline auto report_skipped(const char* command, Progress& progress) {
  return [command, &progress](const std::filesystem::path&, const std::string& reason) {
    progress.break_line();
    std::cerr << "facenet " << command << ": skipped " << reason << "\n";
  };
}

void add_gallery_commands(CLI::App& app, int& exit_code);

}  // namespace facenet::cli
