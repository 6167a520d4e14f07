// CUDA graph capture for the CUDA backend: one batch size's forward recorded once and
// replayed, re-recorded when a buffer it recorded has moved.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>

namespace facenet {

struct GraphDeleter {
  void operator()(cudaGraph_t g) const noexcept { cudaGraphDestroy(g); }
};
struct GraphExecDeleter {
  void operator()(cudaGraphExec_t g) const noexcept { cudaGraphExecDestroy(g); }
};
using UniqueGraph = std::unique_ptr<std::remove_pointer_t<cudaGraph_t>, GraphDeleter>;
using UniqueGraphExec = std::unique_ptr<std::remove_pointer_t<cudaGraphExec_t>, GraphExecDeleter>;

// The forward of one plan. The first run is eager (it loads the libraries' kernels before any
// capture); with graphs enabled the next run records the forward into a CUDA graph, and every
// later run replays it, until the buffer generation it was captured against changes (then it
// is re-captured). A capture that fails (a library call that refuses capture) leaves the
// forward eager: correct, only slower, reported once on stderr.
class CapturedForward {
 public:
  // `batch` names the plan in the report of a failed capture.
  CapturedForward(int64_t batch, bool use_graphs) : batch_(batch), use_graphs_(use_graphs) {}

  // Enqueues the forward on `stream`: replays the graph when it was captured against
  // `generation`, else captures or runs `steps` (which enqueues the forward eagerly on
  // `stream`; a capture records what it enqueues).
  void run(cudaStream_t stream, int generation, const std::function<void()>& steps);
  // Why capture failed and the plan runs eagerly; empty while graphs work.
  const std::string& failure() const { return failure_; }

 private:
  bool capture(cudaStream_t stream, int generation, const std::function<void()>& steps);

  int64_t batch_;
  bool use_graphs_;
  UniqueGraphExec graph_;
  int generation_ = -1;  // buffer generation the graph was captured against
  int eager_runs_ = 0;
  bool failed_ = false;
  std::string failure_;
};

}  // namespace facenet
