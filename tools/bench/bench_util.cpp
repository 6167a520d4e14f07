// Benchmark helpers.
#include "tools/bench/bench_util.h"

#include <oneapi/dnnl/dnnl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <numeric>
#include <thread>

#include "engine/core/blas.h"
#include "engine/core/error.h"

namespace facenet {

TimingStats summarize(std::vector<double> s) {
  TimingStats t;
  if (s.empty()) return t;
  std::sort(s.begin(), s.end());
  t.repeats = static_cast<int>(s.size());
  t.min_s = s.front();
  t.median_s = s.size() % 2 ? s[s.size() / 2] : 0.5 * (s[s.size() / 2 - 1] + s[s.size() / 2]);
  t.mean_s = std::accumulate(s.begin(), s.end(), 0.0) / s.size();
  return t;
}

TimingStats time_repeats(const std::function<void()>& fn, int warmup, int repeats) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> s;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return summarize(std::move(s));
}

nlohmann::json timing_json(const TimingStats& t) {
  return {{"median_ms", t.median_s * 1e3},
          {"min_ms", t.min_s * 1e3},
          {"mean_ms", t.mean_s * 1e3},
          {"repeats", t.repeats}};
}

nlohmann::json machine_json() {
  std::string cpu = "unknown";
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);)
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return {{"cpu", cpu},
          {"cores", std::thread::hardware_concurrency()},
          {"hostname", host},
          {"date", date},
          {"blas", blas_description()},
          {"onednn", detail::concat(dnnl_version()->major, ".", dnnl_version()->minor, ".",
                                    dnnl_version()->patch)},
          {"onednn_isa", onednn_isa_name()}};
}

nlohmann::json run_python_peer(const std::string& script, const std::vector<std::string>& args) {
  // FACENET_PYTHON picks another interpreter (e.g. one whose pip packages hold CUDA PyTorch).
  const char* python = std::getenv("FACENET_PYTHON");
  std::string cmd = std::string(python ? python : "/usr/bin/python3") +
                    " '" FACENET_SOURCE_DIR "/tools/" + script + "'";
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return {{"available", false}, {"reason", "cannot start " + cmd}};
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  const int rc = pclose(pipe);
  // The peer prints its JSON result as the last line.
  std::string last;
  size_t end = out.find_last_not_of("\n");
  if (end != std::string::npos) {
    size_t begin = out.rfind('\n', end);
    last = out.substr(begin == std::string::npos ? 0 : begin + 1,
                      end + 1 - (begin == std::string::npos ? 0 : begin + 1));
  }
  try {
    auto j = nlohmann::json::parse(last);
    if (rc != 0) j["exit_status"] = rc;
    return j;
  } catch (const std::exception&) {
    return {{"available", false},
            {"reason", "peer failed (exit " + std::to_string(rc) +
                           "): " + out.substr(out.size() > 2000 ? out.size() - 2000 : 0)}};
  }
}

}  // namespace facenet
