// Shared pieces of the benchmarks: timing statistics, machine description, and running a
// Python peer (PyTorch, FAISS) in the same run.
#pragma once

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace facenet {

struct TimingStats {
  double median_s = 0, min_s = 0, mean_s = 0;
  int repeats = 0;
};

// Runs fn() `warmup` times untimed, then `repeats` times timed with a steady clock.
TimingStats time_repeats(const std::function<void()>& fn, int warmup, int repeats);
TimingStats summarize(std::vector<double> seconds);

nlohmann::json timing_json(const TimingStats& t);

// {"cpu": model name, "cores": n, "hostname", "date" (UTC ISO-8601), "blas": "OpenBLAS x",
// "onednn": "2.6.3", "onednn_isa": onednn_isa_name() (blas.h)}.
nlohmann::json machine_json();

// Runs `/usr/bin/python3 <source dir>/tools/<script> args...` and parses the last line of its
// stdout as JSON. On any failure returns {"available": false, "reason": ...} instead of
// throwing: a missing peer must never break our own measurement.
nlohmann::json run_python_peer(const std::string& script, const std::vector<std::string>& args);

}  // namespace facenet
