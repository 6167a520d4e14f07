// cuDNN plumbing for the CUDA backend: the cuDNN overload of the one check macro and RAII
// owners for the handle and descriptors (only code that talks to cuDNN includes this).
#pragma once

// cuDNN 9 marks its legacy API (these descriptor types, cudnnConvolutionBiasActivationForward,
// the Find calls) deprecated in favour of the graph API. It remains supported and is the
// simplest obviously-correct route, so the warnings are silenced here: only the cuDNN files
// of the CUDA backend include this header, and the pragma holds for the rest of each of them.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <cudnn.h>

#include <memory>
#include <type_traits>

#include "engine/core/cuda_util.h"

namespace facenet {

void gpu_check(cudnnStatus_t status, const char* stmt, const char* file, int line);

namespace detail {
template <typename H, cudnnStatus_t (*Destroy)(H)>
struct CudnnDeleter {
  void operator()(H h) const noexcept { Destroy(h); }
};
template <typename H, cudnnStatus_t (*Destroy)(H)>
using CudnnOwner = std::unique_ptr<std::remove_pointer_t<H>, CudnnDeleter<H, Destroy>>;
}  // namespace detail

using UniqueCudnn = detail::CudnnOwner<cudnnHandle_t, cudnnDestroy>;
using UniqueTensorDesc = detail::CudnnOwner<cudnnTensorDescriptor_t, cudnnDestroyTensorDescriptor>;
using UniqueFilterDesc = detail::CudnnOwner<cudnnFilterDescriptor_t, cudnnDestroyFilterDescriptor>;
using UniqueConvDesc =
    detail::CudnnOwner<cudnnConvolutionDescriptor_t, cudnnDestroyConvolutionDescriptor>;
using UniqueActivationDesc =
    detail::CudnnOwner<cudnnActivationDescriptor_t, cudnnDestroyActivationDescriptor>;

UniqueCudnn make_cudnn(cudaStream_t stream);
UniqueTensorDesc make_tensor_desc();
UniqueFilterDesc make_filter_desc();
UniqueConvDesc make_conv_desc();
UniqueActivationDesc make_activation_desc();

}  // namespace facenet
