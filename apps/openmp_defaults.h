// The OpenMP spin limit the facenet binaries run with (see openmp_defaults.cpp).
#pragma once

namespace facenet::cli {

// Where GOMP_SPINCOUNT is unset, sets it to kSpinCount and re-executes the program
// (/proc/self/exe, same arguments) so that the OpenMP runtime, which reads its environment
// once when it loads, sees it. Returns only when nothing was to be done or exec failed.
void apply_openmp_defaults(char** argv);

}  // namespace facenet::cli
