// LFW View 2: pairs, fold protocols, ROC, logistic similarity, report and plot.
#include "engine/eval/lfw_eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <numeric>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <sstream>

#include "engine/core/error.h"
#include "engine/face/face.h"
#include "engine/image/opencv_imgcodecs.h"

namespace facenet {

std::vector<LfwPair> read_lfw_pairs(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) fail(file.string(), ": cannot open the LFW pairs file");
  int folds = 0, per = 0;
  if (!(in >> folds >> per) || folds < 1 || per < 1)
    fail(file.string(), ": first line must be '<folds> <pairs per class>' (View 2: 10 300)");
  std::string line;
  std::getline(in, line);
  std::vector<LfwPair> pairs;
  for (int f = 0; f < folds; ++f)
    for (int i = 0; i < 2 * per; ++i) {
      const size_t line_no = pairs.size() + 2;
      if (!std::getline(in, line)) fail(file.string(), ": ends at line ", line_no);
      std::istringstream ls(line);
      std::vector<std::string> t;
      for (std::string w; ls >> w;) t.push_back(w);
      LfwPair p;
      p.fold = f;
      p.same = i < per;
      try {
        if (p.same && t.size() == 3) {
          p.name_a = p.name_b = t[0];
          p.num_a = std::stoi(t[1]);
          p.num_b = std::stoi(t[2]);
        } else if (!p.same && t.size() == 4) {
          p.name_a = t[0];
          p.num_a = std::stoi(t[1]);
          p.name_b = t[2];
          p.num_b = std::stoi(t[3]);
        } else {
          throw std::invalid_argument(line);
        }
      } catch (const std::exception&) {
        fail(file.string(), ": line ", line_no, " is not a ", p.same ? "same" : "different",
             "-person pair ('", line, "')");
      }
      pairs.push_back(p);
    }
  return pairs;
}

std::filesystem::path lfw_image(const std::filesystem::path& dir, const std::string& name,
                                int num) {
  char file[16];
  std::snprintf(file, sizeof file, "_%04d.jpg", num);
  return dir / name / (name + file);
}

std::vector<std::filesystem::path> lfw_first_images(const std::filesystem::path& dir, size_t n) {
  namespace fs = std::filesystem;
  std::vector<fs::path> people, out;
  for (const auto& e : fs::directory_iterator(dir)) people.push_back(e.path());
  std::sort(people.begin(), people.end());
  for (const fs::path& person : people) {
    if (out.size() >= n) break;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(person)) files.push_back(e.path());
    if (files.empty()) continue;
    out.push_back(*std::min_element(files.begin(), files.end()));
  }
  return out;
}

// ---- protocol ------------------------------------------------------------------------------
namespace {

double accuracy_at(const std::vector<double>& score, const std::vector<bool>& same,
                   const std::vector<size_t>& use, double t) {
  size_t right = 0;
  for (size_t i : use) right += (score[i] >= t) == same[i];
  return use.empty() ? 0.0 : static_cast<double>(right) / use.size();
}

void mean_std(FoldAccuracy& r) {
  const double n = static_cast<double>(r.accuracy.size());
  r.mean = std::accumulate(r.accuracy.begin(), r.accuracy.end(), 0.0) / n;
  double v = 0;
  for (double a : r.accuracy) v += (a - r.mean) * (a - r.mean);
  r.std = std::sqrt(v / n);
}

std::pair<std::vector<size_t>, std::vector<size_t>> split(const std::vector<int>& fold, int test) {
  std::vector<size_t> train, held;
  for (size_t i = 0; i < fold.size(); ++i) (fold[i] == test ? held : train).push_back(i);
  return {train, held};
}

}  // namespace

double best_threshold(const std::vector<double>& score, const std::vector<bool>& same,
                      const std::vector<size_t>& use) {
  // Sweep thresholds between consecutive distinct scores: accuracy(t) for t in
  // (s_k, s_{k+1}] accepts exactly the pairs with score >= s_{k+1}.
  std::vector<size_t> order(use);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return score[a] < score[b]; });
  size_t pos_above = 0, neg_above = 0;  // pairs with score >= current threshold
  for (size_t i : order) (same[i] ? pos_above : neg_above)++;
  const size_t negatives = neg_above;
  // t below every score: all accepted.
  size_t best_right = pos_above, best_k = 0;
  double best_gap = -1;
  size_t k = 0;
  while (k < order.size()) {
    const double s = score[order[k]];
    while (k < order.size() && score[order[k]] == s) {
      (same[order[k]] ? pos_above : neg_above)--;
      ++k;
    }
    const size_t right = pos_above + (negatives - neg_above);
    const double gap = k < order.size() ? score[order[k]] - s : 1.0;
    if (right > best_right || (right == best_right && gap > best_gap)) {
      best_right = right;
      best_k = k;
      best_gap = gap;
    }
  }
  if (best_k == 0) return score[order.front()] - 1.0;
  if (best_k == order.size()) return score[order.back()] + 1e-9 + std::fabs(score[order.back()]);
  return 0.5 * (score[order[best_k - 1]] + score[order[best_k]]);
}

FoldAccuracy threshold_folds(const std::vector<double>& score, const std::vector<bool>& same,
                             const std::vector<int>& fold, int folds) {
  FoldAccuracy r;
  for (int f = 0; f < folds; ++f) {
    const auto [train, test] = split(fold, f);
    const double t = best_threshold(score, same, train);
    r.threshold.push_back(t);
    r.accuracy.push_back(accuracy_at(score, same, test, t));
  }
  mean_std(r);
  return r;
}

Roc roc_curve(const std::vector<double>& score, const std::vector<bool>& same) {
  std::vector<size_t> order(score.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return score[a] > score[b]; });
  const double P = static_cast<double>(std::count(same.begin(), same.end(), true));
  const double N = static_cast<double>(same.size()) - P;
  Roc r;
  r.far.push_back(0);
  r.tar.push_back(0);
  double tp = 0, fp = 0;
  r.eer = 1.0;
  double best_eer_gap = 2.0;
  for (size_t k = 0; k < order.size();) {
    const double s = score[order[k]];
    for (; k < order.size() && score[order[k]] == s; ++k) (same[order[k]] ? tp : fp) += 1;
    const double far = fp / N, tar = tp / P;
    r.auc += (far - r.far.back()) * (tar + r.tar.back()) / 2;  // trapezoids: ties count half
    r.far.push_back(far);
    r.tar.push_back(tar);
    if (far <= 1e-3) r.tar_at_far_1e3 = tar;
    const double frr = 1 - tar;
    if (std::fabs(far - frr) < best_eer_gap) {
      best_eer_gap = std::fabs(far - frr);
      r.eer = (far + frr) / 2;
    }
  }
  return r;
}

double Logistic::predict(const float* x) const {
  double z = b;
  for (size_t k = 0; k < w.size(); ++k) z += w[k] * x[k];
  return 1.0 / (1.0 + std::exp(-z));
}

Logistic fit_logistic(const std::vector<float>& x, int64_t dim, const std::vector<bool>& y,
                      const std::vector<size_t>& use, double l2) {
  // Newton (IRLS) on the mean negative log-likelihood + l2/2 |w|^2; the last parameter is b.
  const int64_t p = dim + 1;
  Logistic m;
  m.w.assign(dim, 0.0);
  const double n = static_cast<double>(use.size());
  for (int iter = 0; iter < 50; ++iter) {
    cv::Mat H = cv::Mat::zeros(p, p, CV_64F), g = cv::Mat::zeros(p, 1, CV_64F);
    for (size_t i : use) {
      const float* xi = x.data() + i * dim;
      const double pr = m.predict(xi), r = pr - (y[i] ? 1.0 : 0.0), s = pr * (1 - pr);
      std::vector<double> v(xi, xi + dim);
      v.push_back(1.0);
      for (int64_t a = 0; a < p; ++a) {
        g.at<double>(a) += r * v[a] / n;
        double* row = H.ptr<double>(a);
        for (int64_t c = 0; c <= a; ++c) row[c] += s * v[a] * v[c] / n;
      }
    }
    for (int64_t a = 0; a < p; ++a) {
      for (int64_t c = 0; c < a; ++c) H.at<double>(c, a) = H.at<double>(a, c);
      if (a < dim) {
        H.at<double>(a, a) += l2;
        g.at<double>(a) += l2 * m.w[a];
      } else {
        H.at<double>(a, a) += 1e-9;
      }
    }
    cv::Mat step;
    cv::solve(H, g, step, cv::DECOMP_CHOLESKY);
    double change = 0;
    for (int64_t a = 0; a < dim; ++a) {
      m.w[a] -= step.at<double>(a);
      change = std::max(change, std::fabs(step.at<double>(a)));
    }
    m.b -= step.at<double>(dim);
    if (change < 1e-8) break;
  }
  return m;
}

FoldAccuracy logistic_folds(const std::vector<float>& x, int64_t dim, const std::vector<bool>& same,
                            const std::vector<int>& fold, std::vector<double>* scores, int folds) {
  FoldAccuracy r;
  std::vector<double> p(same.size(), 0.0);
  for (int f = 0; f < folds; ++f) {
    const auto [train, test] = split(fold, f);
    const Logistic m = fit_logistic(x, dim, same, train);
    for (size_t i : test) p[i] = m.predict(x.data() + i * dim);
    r.threshold.push_back(0.5);
    r.accuracy.push_back(accuracy_at(p, same, test, 0.5));
  }
  mean_std(r);
  if (scores) *scores = std::move(p);
  return r;
}

// ---- end to end ----------------------------------------------------------------------------
namespace {

nlohmann::json fold_json(const FoldAccuracy& f) {
  return {{"mean", f.mean}, {"std", f.std}, {"folds", f.accuracy}, {"thresholds", f.threshold}};
}

nlohmann::json roc_json(const Roc& r) {
  // The curve thinned to at most ~400 points for the report.
  nlohmann::json far = nlohmann::json::array(), tar = nlohmann::json::array();
  const size_t step = std::max<size_t>(1, r.far.size() / 400);
  for (size_t i = 0; i < r.far.size(); i += step) {
    far.push_back(r.far[i]);
    tar.push_back(r.tar[i]);
  }
  return {{"auc", r.auc},
          {"eer", r.eer},
          {"tar_at_far_1e-3", r.tar_at_far_1e3},
          {"far", far},
          {"tar", tar}};
}

}  // namespace

nlohmann::json evaluate_lfw(Pipeline& pipeline, const std::filesystem::path& pairs_file,
                            const std::filesystem::path& images_dir, const LfwOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const Model& model = pipeline.model();
  const std::vector<LfwPair> pairs = read_lfw_pairs(pairs_file);
  std::map<std::filesystem::path, size_t> index;
  std::vector<ImageInput> inputs;
  for (const auto& p : pairs)
    for (const auto& path :
         {lfw_image(images_dir, p.name_a, p.num_a), lfw_image(images_dir, p.name_b, p.num_b)})
      if (index.emplace(path, inputs.size()).second) inputs.push_back(ImageInput::file(path));
  const size_t total = inputs.size();

  RequestOptions ro;
  FaceOptions& fo = ro.faces;
  fo.detector = opt.detector;
  fo.pick = FacePick::kCentre;
  fo.upsample = opt.upsample;
  fo.retry_upsampled = true;
  fo.centre_only = opt.centre_only;
  fo.fallback = opt.fallback;
  fo.mirror = opt.mirror;
  fo.jitter = opt.jitter;
  const int64_t dim = model.embedding_dim();
  std::vector<float> emb(total * dim, 0.f);
  std::vector<bool> ok(total, false);
  size_t next = 0, faces_encoded = 0;
  std::vector<std::string> fallback_images, failed_images, cnn_images, off_centre_images;
  pipeline.run(
      std::move(inputs), ro,
      [&](ImageResult& r) {
        const size_t i = next++;
        if (r.off_centre_seen) off_centre_images.push_back(r.name);
        if (r.faces.empty()) {
          failed_images.push_back(r.name + ": " + (r.error.empty() ? "no face" : r.error));
          return;
        }
        faces_encoded += r.faces.size();
        const FaceResult& f = r.faces.front();
        if (f.fallback) fallback_images.push_back(r.name);
        if (f.cnn) cnn_images.push_back(r.name);
        std::copy(f.embedding.begin(), f.embedding.end(), emb.begin() + i * dim);
        ok[i] = true;
      },
      opt.on_progress);
  const double encode_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // Scores: negative L2 distance; a pair with an unusable image (unreadable file) gets the
  // worst score for its label, i.e. it counts as an error at every threshold.
  std::vector<double> score(pairs.size());
  std::vector<bool> same(pairs.size());
  std::vector<int> fold(pairs.size());
  std::vector<float> absdiff(pairs.size() * dim, 0.f);
  size_t unusable_pairs = 0;
  for (size_t k = 0; k < pairs.size(); ++k) {
    const auto& p = pairs[k];
    same[k] = p.same;
    fold[k] = p.fold;
    const size_t a = index.at(lfw_image(images_dir, p.name_a, p.num_a));
    const size_t b = index.at(lfw_image(images_dir, p.name_b, p.num_b));
    if (!ok[a] || !ok[b]) {
      ++unusable_pairs;
      score[k] = p.same ? -1e9 : 1e9;
      continue;
    }
    double d2 = 0;
    for (int64_t j = 0; j < dim; ++j) {
      const float d = emb[a * dim + j] - emb[b * dim + j];
      d2 += static_cast<double>(d) * d;
      absdiff[k * dim + j] = std::fabs(d);
    }
    score[k] = -std::sqrt(d2);
  }
  const FoldAccuracy dist = threshold_folds(score, same, fold);
  const Roc dist_roc = roc_curve(score, same);
  std::vector<double> learned_score;
  const FoldAccuracy learned = logistic_folds(absdiff, dim, same, fold, &learned_score);
  const Roc learned_roc = roc_curve(learned_score, same);
  FoldAccuracy dist_thresholds = dist;
  for (auto& t : dist_thresholds.threshold) t = -t;  // report as L2 distances
  // The pairs the distance protocol gets wrong, each at its own fold's threshold: what a person
  // looks at to see why (a missed detection, a mislabelled pair, a hard pose).
  nlohmann::json errors = nlohmann::json::array();
  for (size_t k = 0; k < pairs.size(); ++k) {
    const double t = dist.threshold[fold[k]];
    if ((score[k] >= t) == same[k]) continue;
    const auto& p = pairs[k];
    errors.push_back({{"a", p.name_a + "/" + std::to_string(p.num_a)},
                      {"b", p.name_b + "/" + std::to_string(p.num_b)},
                      {"same", p.same},
                      {"fold", p.fold},
                      {"distance", -score[k]},
                      {"threshold", -t}});
  }

  const double total_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {
      {"protocol",
       "LFW View 2 (pairs.txt): 10 folds of 300 same + 300 different pairs; threshold chosen "
       "on the other 9 folds; mean and population std over the 10 test folds"},
      {"model",
       {{"name", model.graph.name}, {"alignment", alignment_name(model_alignment(model.graph))}}},
      {"backend", pipeline.backend_name()},
      {"mirror_averaged", opt.jitter == 0 && opt.mirror},
      {"jitter", opt.jitter},
      {"pairs", pairs.size()},
      {"images",
       {{"total", total},
        {"detected", total - fallback_images.size() - failed_images.size()},
        {"by_cnn_detector", cnn_images.size()},
        {"only_off_centre_detections", off_centre_images.size()},
        {"fallback_box", fallback_images.size()},
        {"failed", failed_images.size()},
        {"cnn_images", cnn_images},
        {"off_centre_images", off_centre_images},
        {"fallback_images", fallback_images},
        {"failed_images", failed_images}}},
      {"failure_handling",
       "HOG detector with upsample " + std::to_string(opt.upsample) + ", then " +
           std::to_string(opt.upsample + 1) +
           (opt.detector == DetectorKind::kHogCnnRetry
                ? ", then dlib's CNN detector with upsample " + std::to_string(opt.upsample + 1) +
                      " (images.by_cnn_detector)"
                : std::string()) +
           (opt.centre_only
                ? std::string("; only a box containing the image centre is the labelled face "
                              "(a try that finds only other faces counts as finding none: "
                              "images.off_centre_images), the nearest such "
                              "is used")
                : std::string("; the face nearest the image centre is used")) +
           "; no face: landmarks are predicted in "
           "the fixed box [77, 89, 181, 189] (the median detection) and the image is aligned "
           "and encoded from it (images.fallback_box); an unreadable image makes its pairs "
           "count as errors"},
      {"unusable_pairs", unusable_pairs},
      {"distance",
       {{"metric", "L2 between embeddings (same if distance <= threshold)"},
        {"accuracy", fold_json(dist_thresholds)},
        {"roc", roc_json(dist_roc)},
        {"errors", errors}}},
      {"learned_similarity",
       {{"metric",
         "p = sigmoid(sum_k W_k |f_i,k - f_j,k| + b), logistic regression (Newton, L2 1e-4) fitted "
         "on the 9 training folds of each split; same if p >= 0.5"},
        {"accuracy", fold_json(learned)},
        {"roc", roc_json(learned_roc)}}},
      {"seconds", {{"encode", encode_s}, {"total", total_s}}},
      {"faces_encoded", faces_encoded}};
}

void write_roc_png(const std::filesystem::path& file, const nlohmann::json& report) {
  constexpr int W = 800, H = 600, L = 80, R = 30, T = 50, B = 70;
  cv::Mat img(H, W, CV_8UC3, cv::Scalar(255, 255, 255));
  const double lo = -4;  // log10 FAR axis from 1e-4 to 1
  auto px = [&](double far, double tar) {
    const double lx = std::log10(std::max(far, 1e-4));
    return cv::Point(L + static_cast<int>((lx - lo) / -lo * (W - L - R)),
                     H - B - static_cast<int>(tar * (H - T - B)));
  };
  const auto grey = cv::Scalar(210, 210, 210), black = cv::Scalar(0, 0, 0);
  const int font = cv::FONT_HERSHEY_SIMPLEX;
  for (int e = -4; e <= 0; ++e) {
    cv::line(img, px(std::pow(10, e), 0), px(std::pow(10, e), 1), grey);
    cv::putText(img, "1e" + std::to_string(e), px(std::pow(10, e), 0) + cv::Point(-15, 22), font,
                0.45, black);
  }
  for (int i = 0; i <= 10; ++i) {
    const double t = i / 10.0;
    cv::line(img, px(1e-4, t), px(1, t), grey);
    char s[8];
    std::snprintf(s, sizeof s, "%.1f", t);
    cv::putText(img, s, px(1e-4, t) + cv::Point(-40, 5), font, 0.45, black);
  }
  cv::rectangle(img, px(1e-4, 1), px(1, 0), black);
  cv::putText(img, "false accept rate (log scale)", {W / 2 - 130, H - 20}, font, 0.55, black);
  cv::putText(img, "TAR", {15, H / 2}, font, 0.55, black);
  const std::string title = "LFW View 2 ROC: " + report.at("model").at("name").get<std::string>();
  cv::putText(img, title, {L, 30}, font, 0.6, black, 1, cv::LINE_AA);
  struct Curve {
    const char* key;
    const char* label;
    cv::Scalar color;
  } curves[] = {{"distance", "L2 distance", cv::Scalar(200, 80, 0)},
                {"learned_similarity", "learned |f_i - f_j| logistic", cv::Scalar(0, 120, 230)}};
  int legend_y = H - B - 60;
  for (const auto& c : curves) {
    const auto& roc = report.at(c.key).at("roc");
    const auto far = roc.at("far").get<std::vector<double>>();
    const auto tar = roc.at("tar").get<std::vector<double>>();
    std::vector<cv::Point> pts;
    for (size_t i = 0; i < far.size(); ++i) pts.push_back(px(far[i], tar[i]));
    cv::polylines(img, pts, false, c.color, 2, cv::LINE_AA);
    char s[160];
    std::snprintf(s, sizeof s, "%s: acc %.2f%% +- %.2f, AUC %.4f, EER %.2f%%", c.label,
                  100 * report.at(c.key).at("accuracy").at("mean").get<double>(),
                  100 * report.at(c.key).at("accuracy").at("std").get<double>(),
                  roc.at("auc").get<double>(), 100 * roc.at("eer").get<double>());
    cv::line(img, {L + 15, legend_y - 5}, {L + 45, legend_y - 5}, c.color, 3);
    cv::putText(img, s, {L + 50, legend_y}, font, 0.45, black, 1, cv::LINE_AA);
    legend_y += 22;
  }
  if (!imgcodecs_write(file.string(), img)) fail("cannot write ", file.string());
}

}  // namespace facenet
