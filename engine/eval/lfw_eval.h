// LFW View 2 verification protocol: pairs.txt, 10-fold accuracy with the threshold chosen on
// the other 9 folds, ROC (AUC, EER, TAR at FAR 1e-3), and the learned similarity
// y = sigmoid(sum_k W_k |f(x_i)_k - f(x_j)_k| + b) fitted per split by logistic regression.
#pragma once

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/face/face.h"
#include "engine/pipeline/pipeline.h"

namespace facenet {

struct LfwPair {
  std::string name_a, name_b;
  int num_a = 0, num_b = 0;  // 1-based image numbers
  bool same = false;
  int fold = 0;  // 0..9
};

// Reads the View 2 pairs.txt ("10\t300" then 10 x (300 same + 300 different) lines); throws
// facenet::Error naming the file and line on a malformed one.
std::vector<LfwPair> read_lfw_pairs(const std::filesystem::path& file);
// <dir>/<name>/<name>_<num, 4 digits>.jpg
std::filesystem::path lfw_image(const std::filesystem::path& dir, const std::string& name, int num);
// The first image (sorted by name) of each of the first `n` people (sorted) in an LFW folder:
// the fixed sample the tests and benchmarks take.
std::vector<std::filesystem::path> lfw_first_images(const std::filesystem::path& dir, size_t n);

// ---- protocol on precomputed scores (higher score = more likely the same person) ----------
struct FoldAccuracy {
  std::vector<double> accuracy;   // per test fold
  std::vector<double> threshold;  // per test fold, chosen on the other folds
  double mean = 0, std = 0;       // over folds (population std, as the LFW papers report)
};

// Accuracy-maximising threshold on the pairs `use` (score >= t means same); ties between
// equally good thresholds take the midpoint of the widest gap.
double best_threshold(const std::vector<double>& score, const std::vector<bool>& same,
                      const std::vector<size_t>& use);
FoldAccuracy threshold_folds(const std::vector<double>& score, const std::vector<bool>& same,
                             const std::vector<int>& fold, int folds = 10);

struct Roc {
  std::vector<double> far, tar;  // curve points, FAR ascending
  double auc = 0, eer = 0, tar_at_far_1e3 = 0;
};
Roc roc_curve(const std::vector<double>& score, const std::vector<bool>& same);

// Logistic regression p = sigmoid(w.x + b) by Newton's method with a small L2 penalty on w.
struct Logistic {
  std::vector<double> w;
  double b = 0;
  double predict(const float* x) const;  // probability of "same"
};
Logistic fit_logistic(const std::vector<float>& x, int64_t dim, const std::vector<bool>& y,
                      const std::vector<size_t>& use, double l2 = 1e-4);

// The learned similarity per split: fit on the 9 training folds, accuracy at p >= 0.5 on the
// test fold. `x` holds |f_i - f_j| per pair (dim floats each). `scores` receives each pair's
// p from the model that did not see its fold.
FoldAccuracy logistic_folds(const std::vector<float>& x, int64_t dim, const std::vector<bool>& same,
                            const std::vector<int>& fold, std::vector<double>* scores,
                            int folds = 10);

// ---- end to end ----------------------------------------------------------------------------
struct LfwOptions {
  int upsample = 0;  // dlib pyramid_up count for the first HOG try
  // Detection: HOG at `upsample`, then one level more, then (detector kHogCnnRetry) dlib's CNN
  // detector at that level; the face nearest the image centre is the labelled person. Still
  // nothing: the fixed box below (LFW images are centred on the face), with landmarks predicted
  // inside it. Counted as "fallback" in the report.
  FaceBox fallback{77, 89, 181, 189};  // median HOG box on deep-funneled LFW (250x250)
  DetectorKind detector = DetectorKind::kHogCnnRetry;
  // Only a box containing the image centre may be the labelled person; a try that finds only
  // boxes elsewhere (other people) counts as finding none, and the next one runs.
  bool centre_only = true;
  bool mirror = false;  // average each face's embedding with its mirror image's
  int jitter = 0;       // > 0: average over this many jittered copies instead
  std::function<void(size_t done, size_t total)> on_progress;
};

// Encodes every image the pairs use, runs both protocols, and returns the JSON report.
// The pipeline's model and backend encode; its default request options are not used.
nlohmann::json evaluate_lfw(Pipeline& pipeline, const std::filesystem::path& pairs_file,
                            const std::filesystem::path& images_dir, const LfwOptions& opt);

// ROC curves (distance and learned similarity) as a PNG a person can read: log-FAR axis,
// grid, legend with accuracy and AUC.
void write_roc_png(const std::filesystem::path& file, const nlohmann::json& report);

}  // namespace facenet
