// libgomp's idle threads spin for GOMP_SPINCOUNT iterations (300,000 by default: milliseconds
// on this project's 2-core EPYC) after every parallel region before they sleep. Inside one
// forward pass that keeps oneDNN's barriers cheap, but between the front door's batches the
// spinning thread takes a core from the threads decoding and detecting the next photos.
// 20,000 still covers the gaps between the primitives of a forward and gives the core back
// between batches (bench/results/pipeline-cpu-2026-12-01: raw LFW photos through detect +
// align + encode). OMP_WAIT_POLICY=passive would go further but makes a batch-1 forward ~3x
// slower. The runtime reads its environment when it loads, before main(); setting the variable
// from a constructor is undone by libc's own start-up, so the program re-executes itself once.
#include "apps/openmp_defaults.h"

#include <unistd.h>

#include <cstdlib>

namespace facenet::cli {

namespace {
constexpr const char* kSpinCount = "20000";
}

void apply_openmp_defaults(char** argv) {
  if (std::getenv("GOMP_SPINCOUNT")) return;  // the user's (or ours, after the re-exec)
  if (setenv("GOMP_SPINCOUNT", kSpinCount, 0) != 0) return;
  execv("/proc/self/exe", argv);  // returns only on failure: run on with the runtime's default
}

}  // namespace facenet::cli
