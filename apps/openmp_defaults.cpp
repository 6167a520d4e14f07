// libgomp's idle threads spin for GOMP_SPINCOUNT iterations (300,000 by default: milliseconds
// on this project's 2-core EPYC) after every parallel region before they sleep. Inside one
// forward pass that keeps oneDNN's barriers cheap, but between the front door's batches the
// spinning thread takes a core from the threads decoding and detecting the next photos.
// With 20,000 the core comes back between batches: raw LFW photos through detect + align +
// encode, batch path 150 -> 183 photos/s, 16 single-photo submitters 104 -> 159
// (bench/results/pipeline-cpu-2026-12-01). A forward pass alone is slower with it (nn4.small2,
// 4 alternating runs: batch 1 -25%, batch 64 -5%; bench/results/cpu-2026-12-01-spin), so only
// the commands that prepare images while they encode take it, and `bench` keeps the runtime's
// default. OMP_WAIT_POLICY=passive would go further but makes a batch-1 forward ~3x slower.
// The runtime reads its environment when it loads, before main(); setting the variable from a
// constructor is undone by libc's own start-up, so the program re-executes itself once.
#include "apps/openmp_defaults.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace facenet::cli {

namespace {
constexpr const char* kSpinCount = "20000";
// The commands whose work goes through the front door's preparing threads.
constexpr const char* kPipelineCommands[] = {"encode",   "detect", "enroll", "verify",
                                             "identify", "eval",   "serve"};
}  // namespace

bool is_pipeline_command(const char* command) {
  if (!command) return false;
  for (const char* c : kPipelineCommands)
    if (std::strcmp(command, c) == 0) return true;
  return false;
}

void apply_openmp_defaults(char** argv) {
  if (std::getenv("GOMP_SPINCOUNT")) return;  // the user's (or ours, after the re-exec)
  if (setenv("GOMP_SPINCOUNT", kSpinCount, 0) != 0) return;
  execv("/proc/self/exe", argv);  // returns only on failure: run on with the runtime's default
}

}  // namespace facenet::cli
