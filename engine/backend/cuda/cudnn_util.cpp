// cuDNN plumbing declared in cudnn_util.h: the cuDNN overload of the one check, and makers of
// the RAII-owned handle and descriptors.
#include "engine/backend/cuda/cudnn_util.h"

#include "engine/core/error.h"

namespace facenet {

void gpu_check(cudnnStatus_t status, const char* stmt, const char* file, int line) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  fail("cuDNN error '", cudnnGetErrorString(status), "' in ", stmt, " at ", file, ":", line);
}

UniqueCudnn make_cudnn(cudaStream_t stream) {
  cudnnHandle_t h = nullptr;
  FN_GPU_CHECK(cudnnCreate(&h));
  UniqueCudnn owner(h);
  FN_GPU_CHECK(cudnnSetStream(h, stream));
  return owner;
}

#define FN_CUDNN_MAKER(Type, Fn, Create) \
  Type Fn() {                            \
    Type::pointer p = nullptr;           \
    FN_GPU_CHECK(Create(&p));            \
    return Type(p);                      \
  }
FN_CUDNN_MAKER(UniqueTensorDesc, make_tensor_desc, cudnnCreateTensorDescriptor)
FN_CUDNN_MAKER(UniqueFilterDesc, make_filter_desc, cudnnCreateFilterDescriptor)
FN_CUDNN_MAKER(UniqueConvDesc, make_conv_desc, cudnnCreateConvolutionDescriptor)
FN_CUDNN_MAKER(UniqueActivationDesc, make_activation_desc, cudnnCreateActivationDescriptor)
#undef FN_CUDNN_MAKER

}  // namespace facenet
