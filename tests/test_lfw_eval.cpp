// The LFW View 2 protocol on synthetic scores with known answers, and the shared pairs.txt.
#include <cmath>
#include <fstream>
#include <random>

#include "engine/core/error.h"
#include "engine/eval/lfw_eval.h"
#include "tests/test_util.h"

namespace facenet {
namespace {

TEST(LfwPairs, ReadsViewTwo) {
  const auto pairs = read_lfw_pairs(test::shared_path("data/lfw/pairs.txt"));
  ASSERT_EQ(pairs.size(), 6000u);
  for (size_t i = 0; i < pairs.size(); ++i) {
    EXPECT_EQ(pairs[i].fold, static_cast<int>(i / 600));
    EXPECT_EQ(pairs[i].same, i % 600 < 300);
    if (pairs[i].same) {
      EXPECT_EQ(pairs[i].name_a, pairs[i].name_b);
    }
  }
  EXPECT_EQ(lfw_image("/x", "Abel_Pacheco", 1),
            std::filesystem::path("/x/Abel_Pacheco/Abel_Pacheco_0001.jpg"));
}

TEST(LfwPairs, MalformedLineIsNamed) {
  const auto file = std::filesystem::temp_directory_path() / "facenet-test-pairs.txt";
  std::ofstream(file) << "1\t1\nA\t1\t2\nB\t1\n";
  try {
    read_lfw_pairs(file);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 3"), std::string::npos) << e.what();
  }
  std::filesystem::remove(file);
}

// 10 folds of 300 + 300 pairs: positives score +1, negatives -1, except that fold k has k
// positives scored -1 (errors at any threshold in (-1, 1]). The threshold learned on the
// other folds separates +1 from -1, so fold k's accuracy is 1 - k/600.
TEST(LfwProtocol, ThresholdFoldsKnownAnswer) {
  std::vector<double> score;
  std::vector<bool> same;
  std::vector<int> fold;
  for (int f = 0; f < 10; ++f)
    for (int i = 0; i < 600; ++i) {
      const bool s = i < 300;
      same.push_back(s);
      fold.push_back(f);
      score.push_back(s ? (i < f ? -1.0 : 1.0) : -1.0);
    }
  const FoldAccuracy r = threshold_folds(score, same, fold);
  ASSERT_EQ(r.accuracy.size(), 10u);
  double var = 0;
  for (int f = 0; f < 10; ++f) {
    EXPECT_DOUBLE_EQ(r.accuracy[f], 1.0 - f / 600.0) << "fold " << f;
    EXPECT_GT(r.threshold[f], -1.0);
    EXPECT_LE(r.threshold[f], 1.0);
    var += std::pow(f / 600.0 - 4.5 / 600.0, 2);
  }
  EXPECT_NEAR(r.mean, 1.0 - 4.5 / 600.0, 1e-12);
  EXPECT_NEAR(r.std, std::sqrt(var / 10), 1e-12);
}

TEST(LfwProtocol, BestThresholdPicksTheMidpointOfTheGap) {
  const std::vector<double> score{0.1, 0.2, 0.3, 0.8, 0.9};
  const std::vector<bool> same{false, false, false, true, true};
  EXPECT_DOUBLE_EQ(best_threshold(score, same, {0, 1, 2, 3, 4}), 0.55);
}

TEST(LfwProtocol, RocKnownAnswers) {
  const std::vector<bool> same{true, true, false, false};
  const Roc perfect = roc_curve({4, 3, 2, 1}, same);
  EXPECT_DOUBLE_EQ(perfect.auc, 1.0);
  EXPECT_DOUBLE_EQ(perfect.eer, 0.0);
  EXPECT_DOUBLE_EQ(perfect.tar_at_far_1e3, 1.0);
  EXPECT_DOUBLE_EQ(roc_curve({1, 2, 3, 4}, same).auc, 0.0);
  EXPECT_DOUBLE_EQ(roc_curve({1, 1, 1, 1}, same).auc, 0.5);  // ties count half
  // One positive below one negative: 3 of 4 positive/negative orderings are right.
  const Roc r = roc_curve({4, 2, 3, 1}, same);
  EXPECT_DOUBLE_EQ(r.auc, 0.75);
  EXPECT_DOUBLE_EQ(r.eer, 0.5);
}

// Features |f_i - f_j| where only dimension 0 carries identity: small for same-person pairs.
TEST(LfwProtocol, LogisticLearnsTheInformativeDimension) {
  std::mt19937 rng(5);
  std::normal_distribution<float> noise(0.f, 1.f);
  const int64_t dim = 4;
  std::vector<float> x;
  std::vector<bool> same;
  std::vector<int> fold;
  for (int f = 0; f < 10; ++f)
    for (int i = 0; i < 100; ++i) {
      const bool s = i < 50;
      same.push_back(s);
      fold.push_back(f);
      x.push_back(std::fabs((s ? 0.2f : 1.0f) + 0.1f * noise(rng)));
      for (int k = 1; k < dim; ++k) x.push_back(std::fabs(noise(rng)));
    }
  std::vector<double> p;
  const FoldAccuracy r = logistic_folds(x, dim, same, fold, &p);
  EXPECT_GT(r.mean, 0.99);
  ASSERT_EQ(p.size(), same.size());
  std::vector<size_t> all(same.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  const Logistic m = fit_logistic(x, dim, same, all);
  EXPECT_LT(m.w[0], -5.0);  // larger difference -> less likely the same person
  for (int k = 1; k < dim; ++k) EXPECT_LT(std::fabs(m.w[k]), std::fabs(m.w[0]) / 5) << k;
}

}  // namespace
}  // namespace facenet
