// Straightforward NCHW loops with double accumulation; see cpu_reference.h.
#include "engine/backend/reference/cpu_reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "engine/backend/pool_kind.h"
#include "engine/core/error.h"

namespace facenet {

namespace {

struct Dims4 {
  int64_t n, c, h, w;
};

Dims4 dims(const HostTensor& t) {
  FN_ASSERT(t.shape.size() == 4);
  return {t.shape[0], t.shape[1], t.shape[2], t.shape[3]};
}

inline int64_t at(const Dims4& d, int64_t n, int64_t c, int64_t y, int64_t x) {
  return ((n * d.c + c) * d.h + y) * d.w + x;
}


HostTensor pool_direct(const HostTensor& x, int kernel, int stride, int pad, PoolKind kind) {
  const Dims4 d = dims(x);
  const int64_t ho = (d.h + 2 * pad - kernel) / stride + 1;
  const int64_t wo = (d.w + 2 * pad - kernel) / stride + 1;
  HostTensor y({d.n, d.c, ho, wo});
  const Dims4 e = dims(y);
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t c = 0; c < d.c; ++c)
      for (int64_t oy = 0; oy < ho; ++oy)
        for (int64_t ox = 0; ox < wo; ++ox) {
          double acc = kind == PoolKind::kMax ? -std::numeric_limits<double>::infinity() : 0.0;
          for (int ky = 0; ky < kernel; ++ky)
            for (int kx = 0; kx < kernel; ++kx) {
              const int64_t iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
              if (iy < 0 || iy >= d.h || ix < 0 || ix >= d.w) continue;  // padding
              const double v = x.data[at(d, n, c, iy, ix)];
              if (kind == PoolKind::kMax)
                acc = std::max(acc, v);
              else
                acc += kind == PoolKind::kL2 ? v * v : v;
            }
          double out = acc;
          if (kind == PoolKind::kAvg) out = acc / (kernel * kernel);
          if (kind == PoolKind::kL2) out = std::sqrt(acc);
          y.data[at(e, n, c, oy, ox)] = static_cast<float>(out);
        }
  return y;
}

}  // namespace

HostTensor conv2d_direct(const HostTensor& x, const HostTensor& w, const HostTensor& b, int stride,
                         int pad) {
  const Dims4 d = dims(x);
  const int64_t o = w.shape[0], k = w.shape[2];
  FN_ASSERT(w.shape[1] == d.c && w.shape[3] == k && b.size() == o);
  const int64_t ho = (d.h + 2 * pad - k) / stride + 1, wo = (d.w + 2 * pad - k) / stride + 1;
  HostTensor y({d.n, o, ho, wo});
  const Dims4 e = dims(y);
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t oc = 0; oc < o; ++oc)
      for (int64_t oy = 0; oy < ho; ++oy)
        for (int64_t ox = 0; ox < wo; ++ox) {
          double acc = b.data[oc];
          for (int64_t ic = 0; ic < d.c; ++ic)
            for (int64_t ky = 0; ky < k; ++ky)
              for (int64_t kx = 0; kx < k; ++kx) {
                const int64_t iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                if (iy < 0 || iy >= d.h || ix < 0 || ix >= d.w) continue;
                acc += static_cast<double>(w.data[((oc * d.c + ic) * k + ky) * k + kx]) *
                       x.data[at(d, n, ic, iy, ix)];
              }
          y.data[at(e, n, oc, oy, ox)] = static_cast<float>(acc);
        }
  return y;
}

HostTensor batchnorm_direct(const HostTensor& x, const HostTensor& gamma, const HostTensor& beta,
                            const HostTensor& mean, const HostTensor& var, double eps) {
  const Dims4 d = dims(x);
  HostTensor y(x.shape);
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t c = 0; c < d.c; ++c)
      for (int64_t i = 0; i < d.h * d.w; ++i) {
        const int64_t idx = (n * d.c + c) * d.h * d.w + i;
        y.data[idx] = static_cast<float>((x.data[idx] - static_cast<double>(mean.data[c])) /
                                             std::sqrt(static_cast<double>(var.data[c]) + eps) *
                                             gamma.data[c] +
                                         beta.data[c]);
      }
  return y;
}

HostTensor relu_direct(const HostTensor& x) {
  HostTensor y(x.shape);
  for (int64_t i = 0; i < x.size(); ++i) y.data[i] = x.data[i] > 0.f ? x.data[i] : 0.f;
  return y;
}

HostTensor affine_direct(const HostTensor& x, const HostTensor& gamma, const HostTensor& beta) {
  const Dims4 d = dims(x);
  HostTensor y(x.shape);
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t c = 0; c < d.c; ++c)
      for (int64_t i = 0; i < d.h * d.w; ++i) {
        const int64_t idx = (n * d.c + c) * d.h * d.w + i;
        y.data[idx] =
            static_cast<float>(static_cast<double>(gamma.data[c]) * x.data[idx] + beta.data[c]);
      }
  return y;
}

HostTensor add_direct(const HostTensor& a, const HostTensor& b) {
  const Dims4 da = dims(a), db = dims(b);
  FN_ASSERT(da.n == db.n);
  HostTensor y({da.n, std::max(da.c, db.c), std::max(da.h, db.h), std::max(da.w, db.w)});
  const Dims4 e = dims(y);
  auto value = [](const HostTensor& t, const Dims4& d, int64_t n, int64_t c, int64_t yy,
                  int64_t xx) {
    return c < d.c && yy < d.h && xx < d.w ? static_cast<double>(t.data[at(d, n, c, yy, xx)]) : 0.0;
  };
  for (int64_t n = 0; n < e.n; ++n)
    for (int64_t c = 0; c < e.c; ++c)
      for (int64_t yy = 0; yy < e.h; ++yy)
        for (int64_t xx = 0; xx < e.w; ++xx)
          y.data[at(e, n, c, yy, xx)] =
              static_cast<float>(value(a, da, n, c, yy, xx) + value(b, db, n, c, yy, xx));
  return y;
}

HostTensor maxpool_direct(const HostTensor& x, int kernel, int stride, int pad) {
  return pool_direct(x, kernel, stride, pad, PoolKind::kMax);
}
HostTensor avgpool_direct(const HostTensor& x, int kernel, int stride, int pad) {
  return pool_direct(x, kernel, stride, pad, PoolKind::kAvg);
}
HostTensor l2pool_direct(const HostTensor& x, int kernel, int stride, int pad) {
  return pool_direct(x, kernel, stride, pad, PoolKind::kL2);
}

HostTensor lrn_direct(const HostTensor& x, int size, double alpha, double beta, double k) {
  const Dims4 d = dims(x);
  HostTensor y(x.shape);
  const int64_t half = size / 2;
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t c = 0; c < d.c; ++c)
      for (int64_t i = 0; i < d.h * d.w; ++i) {
        double sum = 0.0;
        for (int64_t j = std::max<int64_t>(0, c - half); j <= std::min(d.c - 1, c + half); ++j) {
          const double v = x.data[(n * d.c + j) * d.h * d.w + i];
          sum += v * v;
        }
        const int64_t idx = (n * d.c + c) * d.h * d.w + i;
        y.data[idx] = static_cast<float>(x.data[idx] / std::pow(k + alpha / size * sum, beta));
      }
  return y;
}

HostTensor concat_direct(const std::vector<const HostTensor*>& xs) {
  FN_ASSERT(!xs.empty());
  int64_t c = 0, h = 0, w = 0;
  for (const HostTensor* t : xs) {
    c += t->shape[1];
    h = std::max(h, t->shape[2]);
    w = std::max(w, t->shape[3]);
  }
  const int64_t n = xs[0]->shape[0];
  HostTensor y({n, c, h, w});
  const Dims4 e = dims(y);
  int64_t c0 = 0;
  for (const HostTensor* t : xs) {
    const Dims4 d = dims(*t);
    const int64_t top = (h - d.h) / 2, left = (w - d.w) / 2;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t ci = 0; ci < d.c; ++ci)
        for (int64_t yy = 0; yy < d.h; ++yy)
          for (int64_t xx = 0; xx < d.w; ++xx)
            y.data[at(e, i, c0 + ci, yy + top, xx + left)] = t->data[at(d, i, ci, yy, xx)];
    c0 += d.c;
  }
  return y;
}

HostTensor dense_direct(const HostTensor& x, const HostTensor& w, const HostTensor& b) {
  const int64_t n = x.shape[0], in = x.size() / n, out = w.shape[0];
  FN_ASSERT(w.shape[1] == in);
  HostTensor y({n, out, 1, 1});
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double acc = b.data[o];
      for (int64_t j = 0; j < in; ++j)
        acc += static_cast<double>(w.data[o * in + j]) * x.data[i * in + j];
      y.data[i * out + o] = static_cast<float>(acc);
    }
  return y;
}

HostTensor l2norm_direct(const HostTensor& x, double eps) {
  const int64_t n = x.shape[0], per = x.size() / n;
  HostTensor y(x.shape);
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0.0;
    for (int64_t j = 0; j < per; ++j)
      ss += static_cast<double>(x.data[i * per + j]) * x.data[i * per + j];
    const double inv = 1.0 / std::sqrt(std::max(ss, eps));
    for (int64_t j = 0; j < per; ++j)
      y.data[i * per + j] = static_cast<float>(x.data[i * per + j] * inv);
  }
  return y;
}

namespace {

class ReferenceBackend final : public Backend {
 public:
  explicit ReferenceBackend(Model m) : model_(std::move(m)) {}
  std::string name() const override { return "cpu-reference"; }

  void forward(const float* x, int64_t n, float* y) override {
    const Graph& g = model_.graph;
    Shape in_shape{n};
    in_shape.insert(in_shape.end(), g.input_shape.begin(), g.input_shape.end());
    std::map<std::string, HostTensor> values;
    values[g.input] = HostTensor(in_shape, std::vector<float>(x, x + element_count(in_shape)));
    const auto& t = model_.tensors;
    for (const Node& node : g.nodes) {
      const HostTensor& a = values.at(node.inputs[0]);
      HostTensor out;
      switch (node.op) {
        case OpType::kConv:
          out = conv2d_direct(a, t.at(node.weight), t.at(node.bias), node.stride, node.pad);
          break;
        case OpType::kBatchNorm:
          out = batchnorm_direct(a, t.at(node.gamma), t.at(node.beta), t.at(node.mean),
                                 t.at(node.var), node.eps);
          break;
        case OpType::kRelu:
          out = relu_direct(a);
          break;
        case OpType::kAffine:
          out = affine_direct(a, t.at(node.gamma), t.at(node.beta));
          break;
        case OpType::kAdd:
          out = add_direct(a, values.at(node.inputs[1]));
          break;
        case OpType::kMaxPool:
          out = maxpool_direct(a, node.kernel, node.stride, node.pad);
          break;
        case OpType::kAvgPool:
          out = avgpool_direct(a, node.kernel, node.stride, node.pad);
          break;
        case OpType::kL2Pool:
          out = l2pool_direct(a, node.kernel, node.stride, node.pad);
          break;
        case OpType::kLrn:
          out = lrn_direct(a, node.size, node.alpha, node.beta_pow, node.k);
          break;
        case OpType::kConcat: {
          std::vector<const HostTensor*> xs;
          for (const auto& i : node.inputs) xs.push_back(&values.at(i));
          out = concat_direct(xs);
          break;
        }
        case OpType::kDense:
          out = dense_direct(a, t.at(node.weight), t.at(node.bias));
          break;
        case OpType::kL2Norm:
          out = l2norm_direct(a, node.eps);
          break;
      }
      values[node.name] = std::move(out);
    }
    const HostTensor& result = values.at(g.output);
    std::copy(result.data.begin(), result.data.end(), y);
  }

 private:
  const Model model_;
};

}  // namespace

std::unique_ptr<Backend> make_reference_backend(const Model& model) {
  return std::make_unique<ReferenceBackend>(model);
}

}  // namespace facenet
