// CUDA graph capture and replay of a plan's forward (graph_capture.h).
#include "engine/backend/cuda/graph_capture.h"

#include <cstdio>
#include <string>
#include <utility>

#include "engine/core/cuda_util.h"
#include "engine/core/error.h"

namespace facenet {
namespace {

// Ends the capture on `stream`: its status and the graph recorded (owned; null on failure).
std::pair<cudaError_t, UniqueGraph> end_capture(cudaStream_t stream) {
  cudaGraph_t g = nullptr;
  const cudaError_t status = cudaStreamEndCapture(stream, &g);
  return {status, UniqueGraph(g)};
}

}  // namespace

void CapturedForward::run(cudaStream_t stream, int generation, const std::function<void()>& steps) {
  if (graph_ && generation_ == generation) {
    FN_GPU_CHECK(cudaGraphLaunch(graph_.get(), stream));
    return;
  }
  if (use_graphs_ && !failed_ && eager_runs_ > 0 && capture(stream, generation, steps)) {
    FN_GPU_CHECK(cudaGraphLaunch(graph_.get(), stream));
    return;
  }
  steps();
  ++eager_runs_;
}

bool CapturedForward::capture(cudaStream_t stream, int generation,
                              const std::function<void()>& steps) {
  std::string why;
  FN_GPU_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    steps();
  } catch (const Error& e) {
    why = e.what();
  } catch (...) {         // not a refusal to capture: leave the stream usable, then report it
    end_capture(stream);  // the partial graph is destroyed with the result
    cudaGetLastError();
    throw;
  }
  const auto [end, graph] = end_capture(stream);
  cudaGraphExec_t exec = nullptr;
  if (why.empty() && end == cudaSuccess) {
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph.get(), 0);
    if (inst != cudaSuccess) why = cudaGetErrorString(inst);
  } else if (why.empty()) {
    why = cudaGetErrorString(end);
  }
  if (!why.empty()) {
    cudaGetLastError();
    failed_ = true;
    std::fprintf(stderr, "facenet: CUDA graph capture failed for batch %lld, running eagerly: %s\n",
                 static_cast<long long>(batch_), why.c_str());
    return false;
  }
  graph_.reset(exec);
  generation_ = generation;
  return true;
}

}  // namespace facenet
