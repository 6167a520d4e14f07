// The OpenMP spin limit the facenet binaries run with (see openmp_defaults.cpp).
#pragma once

namespace facenet::cli {

// Whether a facenet command runs images through the front door (encode, detect, enroll,
// verify, identify, eval, serve): those take the spin limit; the others keep the runtime's default.
bool is_pipeline_command(const char* command);

// Where GOMP_SPINCOUNT is unset, sets it to 20000 and re-executes the program
// (/proc/self/exe, same arguments), so that the OpenMP runtime, which reads its environment
// once when it loads, sees it. Returns only when nothing was to be done or exec failed.
void apply_openmp_defaults(char** argv);

}  // namespace facenet::cli
