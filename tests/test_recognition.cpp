// Gallery CLI end to end: the happy-house tutorial scenario (enrol 12 people, verify, identify),
// bulk enrolment from a folder per person, and the errors a user can run into. With the
// stand-in nn4.small2 weights the identities mean nothing: these tests check the plumbing and
// that every reported distance is the true L2 distance between the embeddings.
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/search/gallery.h"
#include "engine/search/recognition.h"
#ifdef FACENET_HAS_DLIB
#include <opencv2/imgcodecs.hpp>

#include "engine/face/face.h"
#endif
#include "tests/cli_fixture.h"

namespace facenet {
namespace {

namespace fs = std::filesystem;

const char* kPeople[] = {"danielle",   "younes",   "tian",  "andrew", "kian",   "dan",
                         "sebastiano", "bertrand", "kevin", "felix",  "benoit", "arnaud"};

std::vector<nlohmann::json> json_lines(const std::string& text) {
  std::vector<nlohmann::json> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

double l2(const std::vector<double>& a, const std::vector<double>& b) {
  double ss = 0;
  for (size_t i = 0; i < a.size(); ++i) ss += (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(ss);
}

class Recognition : public test::Cli {
 protected:
  std::string gallery() { return (dir_ / "g.db").string(); }
  std::string image_of(const std::string& person) {
    return happy(person == "danielle" ? person + ".png" : person + ".jpg");
  }
  // Embeddings of the happy-house images straight from `facenet encode`, by file stem.
  std::map<std::string, std::vector<double>> embeddings() {
    const auto r = run("encode --model " + model() + " " +
                       test::shared_path("data/happy-house/images").string());
    EXPECT_EQ(r.status, 0) << r.err;
    std::map<std::string, std::vector<double>> out;
    for (const auto& j : json_lines(r.out))
      out[fs::path(j["image"].get<std::string>()).stem().string()] =
          j["embedding"].get<std::vector<double>>();
    return out;
  }
  void enrol_tutorial_people() {
    for (const char* p : kPeople) {
      const auto r = run("enroll --create --gallery " + gallery() + " --model " + model() +
                         " --name " + p + " " + image_of(p));
      ASSERT_EQ(r.status, 0) << r.err;
      EXPECT_EQ(nlohmann::json::parse(r.out)["name"], p);
    }
  }
};

TEST_F(Recognition, TutorialScenarioReportsTrueDistances) {
  enrol_tutorial_people();
  const auto emb = embeddings();

  const auto stats = run("gallery stats --gallery " + gallery());
  ASSERT_EQ(stats.status, 0) << stats.err;
  const auto s = nlohmann::json::parse(stats.out);
  EXPECT_EQ(s["identities"], 12);
  EXPECT_EQ(s["embeddings"], 12);
  EXPECT_EQ(s["dim"], 128);
  EXPECT_NE(s["model"].get<std::string>().find("nn4.small2.v1/openface#"), std::string::npos);

  const auto v = run("verify --gallery " + gallery() + " --model " + model() + " --name younes " +
                     happy("camera_0.jpg"));
  ASSERT_EQ(v.status, 0) << v.err;
  const auto vj = nlohmann::json::parse(v.out);
  EXPECT_EQ(vj["name"], "younes");
  EXPECT_DOUBLE_EQ(vj["threshold"].get<double>(), 0.7);
  const double d = l2(emb.at("camera_0"), emb.at("younes"));
  EXPECT_NEAR(vj["distance"].get<double>(), d, 1e-5);
  EXPECT_EQ(vj["match"].get<bool>(), d <= 0.7);

  const auto id =
      run("identify --gallery " + gallery() + " --model " + model() + " --k 3 " +
          happy("camera_0.jpg") + " " + happy("camera_1.jpg") + " " + happy("camera_2.jpg") + " " +
          happy("camera_3.jpg") + " " + happy("camera_4.jpg") + " " + happy("camera_5.jpg"));
  ASSERT_EQ(id.status, 0) << id.err;
  const auto rows = json_lines(id.out);
  ASSERT_EQ(rows.size(), 6u);
  for (const auto& row : rows) {
    const std::string probe = fs::path(row["image"].get<std::string>()).stem().string();
    // The true nearest identity by brute force over the 12 enrolled embeddings.
    std::vector<std::pair<double, std::string>> all;
    for (const char* p : kPeople) all.push_back({l2(emb.at(probe), emb.at(p)), p});
    std::sort(all.begin(), all.end());
    ASSERT_EQ(row["top"].size(), 3u) << probe;
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(row["top"][i]["name"], all[i].second) << probe << " rank " << i;
      EXPECT_NEAR(row["top"][i]["distance"].get<double>(), all[i].first, 1e-5);
    }
    EXPECT_EQ(row["identity"], all[0].first <= 0.7 ? all[0].second : "unknown") << probe;
  }

  // A strict threshold turns every answer into "unknown".
  const auto strict = run("identify --threshold 0.01 --gallery " + gallery() + " --model " +
                          model() + " " + happy("camera_0.jpg"));
  EXPECT_EQ(nlohmann::json::parse(strict.out)["identity"], "unknown");
}

TEST_F(Recognition, BulkEnrolmentFromFolders) {
  const auto root = test::shared_path("data/krasserm-lfw10/images").string();
  const auto r = run("enroll --create --gallery " + gallery() + " --model " + model() +
                     " --from-dirs " + root);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["people"], 10);
  EXPECT_EQ(j["embeddings"], 100);
  const auto list = json_lines(run("gallery list --gallery " + gallery()).out);
  ASSERT_EQ(list.size(), 10u);
  EXPECT_EQ(list[0]["name"], "Ariel_Sharon");
  EXPECT_EQ(list[0]["embeddings"], 10);
  // An enrolled image is its own nearest neighbour at distance ~0.
  const auto id = run("identify --gallery " + gallery() + " --model " + model() + " " + root +
                      "/Colin_Powell/Colin_Powell_0003.jpg");
  const auto row = nlohmann::json::parse(id.out);
  EXPECT_EQ(row["identity"], "Colin_Powell");
  EXPECT_LT(row["distance"].get<double>(), 1e-3);
  // Removal takes the person and every embedding.
  const auto rm = run("gallery remove --gallery " + gallery() + " --name Colin_Powell");
  ASSERT_EQ(rm.status, 0) << rm.err;
  EXPECT_EQ(nlohmann::json::parse(rm.out)["embeddings"], 10);
  EXPECT_EQ(json_lines(run("gallery list --gallery " + gallery()).out).size(), 9u);
}

TEST_F(Recognition, UserMistakesAreClearErrors) {
  // Empty gallery.
  ASSERT_EQ(run("gallery create --gallery " + gallery()).status, 0);
  auto r = run("identify --gallery " + gallery() + " --model " + model() + " " + happy("tian.jpg"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("empty"), std::string::npos) << r.err;

  enrol_tutorial_people();
  // Unknown name.
  r = run("verify --gallery " + gallery() + " --model " + model() + " --name nobody " +
          happy("camera_0.jpg"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("nobody"), std::string::npos) << r.err;
  // Wrong model: the coursera variant has other weights' fingerprint and graph.
  const std::string other = test::converted_model("coursera").string();
  r = run("identify --gallery " + gallery() + " --model " + other + " " + happy("tian.jpg"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("coursera"), std::string::npos) << r.err;
  r = run("enroll --gallery " + gallery() + " --model " + other + " --name x " + happy("tian.jpg"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("refusing"), std::string::npos) << r.err;
  // Corrupt gallery file.
  const auto bad = dir_ / "bad.db";
  std::ofstream(bad) << std::string(4096, 'x');
  r = run("gallery list --gallery " + bad.string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("bad.db"), std::string::npos) << r.err;
  // Missing gallery.
  r = run("gallery stats --gallery " + (dir_ / "none.db").string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
}

#ifdef FACENET_HAS_DLIB
// The README's main job with the real dlib ResNet: raw photos in, faces detected and aligned,
// the right people named. Needs the fetched dlib models (tools/test.sh fetches them).
TEST_F(Recognition, RawPhotosWithTheDlibResNetNameTheRightPeople) {
  const fs::path dat = default_dlib_models_dir() / "dlib_face_recognition_resnet_model_v1.dat";
  if (!fs::exists(dat)) GTEST_SKIP() << dat << " missing: run weights/fetch_dlib_models.sh";
  const std::string model = (dir_ / "dlib.safetensors").string();
  ASSERT_EQ(run("convert dlib-resnet " + dat.string() + " -o " + model).status, 0);
  const std::string ex = test::shared_path("data/openface-examples/images/examples/").string();
  const std::string common = " --gallery " + gallery() + " --model " + model;
  for (const char* p : {"lennon-1:lennon", "clapton-1:clapton", "adams:adams", "carell:carell"}) {
    const std::string spec = p;
    const auto r =
        run("enroll --create --align largest" + common + " --name " +
            spec.substr(spec.find(':') + 1) + " " + ex + spec.substr(0, spec.find(':')) + ".jpg");
    ASSERT_EQ(r.status, 0) << r.err;
  }
  const auto v = run("verify --align largest" + common + " --name lennon " + ex + "lennon-2.jpg");
  ASSERT_EQ(v.status, 0) << v.err;
  EXPECT_TRUE(nlohmann::json::parse(v.out)["match"].get<bool>()) << v.out;
  EXPECT_DOUBLE_EQ(nlohmann::json::parse(v.out)["threshold"].get<double>(), 0.6);  // dlib's

  // Test-time jitter (dlib's num_jitters): another, nearby distance, the same answer, and the
  // same distance again on a rerun (the jitter is seeded by the file name).
  const double plain = nlohmann::json::parse(v.out)["distance"].get<double>();
  double jittered[2];
  for (double& d : jittered) {
    const auto j =
        run("verify --align largest --jitter 4" + common + " --name lennon " + ex + "lennon-2.jpg");
    ASSERT_EQ(j.status, 0) << j.err;
    EXPECT_TRUE(nlohmann::json::parse(j.out)["match"].get<bool>()) << j.out;
    d = nlohmann::json::parse(j.out)["distance"].get<double>();
  }
  EXPECT_NE(jittered[0], plain);
  EXPECT_NEAR(jittered[0], plain, 0.1);
  EXPECT_EQ(jittered[0], jittered[1]);

  const auto id = run("identify --align all" + common + " " + ex + "lennon-2.jpg " + ex +
                      "clapton-2.jpg " + ex + "longoria-cooper.jpg");
  ASSERT_EQ(id.status, 0) << id.err;
  const auto rows = json_lines(id.out);
  ASSERT_EQ(rows.size(), 4u) << id.out;  // longoria-cooper.jpg holds two faces
  EXPECT_EQ(rows[0]["identity"], "lennon");
  EXPECT_EQ(rows[1]["identity"], "clapton");
  EXPECT_EQ(rows[2]["identity"], "unknown");  // not enrolled
  EXPECT_EQ(rows[3]["identity"], "unknown");
  EXPECT_EQ(rows[2]["face"], 0);
  EXPECT_EQ(rows[3]["face"], 1);
  EXPECT_EQ(rows[3]["box"].size(), 4u);

  // A face the HOG detector misses (deep-funneled LFW): with --detector hog reported as no
  // face, found by the default (hog+cnn-retry) and by --detector cnn, in the same box.
  const std::string hard =
      test::shared_path("data/lfw/lfw-deepfunneled/Jelena_Dokic/Jelena_Dokic_0004.jpg").string();
  const auto hog = run("encode --align largest --detector hog --model " + model + " " + hard);
  EXPECT_EQ(hog.status, 0) << hog.err;
  EXPECT_NE(hog.err.find("no face found"), std::string::npos) << hog.err;
  EXPECT_TRUE(json_lines(hog.out).empty()) << hog.out;
  const auto retry = run("encode --align largest --model " + model + " " + hard);
  EXPECT_EQ(retry.status, 0) << retry.err;
  ASSERT_EQ(json_lines(retry.out).size(), 1u) << retry.out << retry.err;
  EXPECT_EQ(json_lines(retry.out)[0]["embedding"].size(), 128u);
  const auto cnn = run("encode --align largest --detector cnn --model " + model + " " + hard);
  ASSERT_EQ(json_lines(cnn.out).size(), 1u) << cnn.out << cnn.err;
  EXPECT_EQ(json_lines(cnn.out)[0]["box"], json_lines(retry.out)[0]["box"]);

  // A photo without a face is reported and skipped, not fatal.
  const fs::path blank = dir_ / "blank.png";
  cv::imwrite(blank.string(), cv::Mat(200, 200, CV_8UC3, cv::Scalar(128, 128, 128)));
  const auto none =
      run("identify --align all" + common + " " + blank.string() + " " + ex + "clapton-2.jpg");
  EXPECT_EQ(none.status, 1);
  EXPECT_NE(none.err.find("no face found"), std::string::npos) << none.err;
  EXPECT_EQ(json_lines(none.out).size(), 1u);
}
#endif

// A large CPU gallery is stored as split bf16 where the CPU runs bf16, and answers exactly as
// the fp32 one: 100,000 rows of 1,000 people (unit vectors, some rows near-duplicates).
TEST(Identifier, LargeGalleriesTakeBf16StorageWithTheSameAnswers) {
  const int dim = 128, people = 1000;
  const int64_t rows = Identifier::kAutoBf16Rows;
  std::mt19937 rng(77);
  std::normal_distribution<float> g(0.0f, 1.0f);
  GalleryMatrix m;
  m.spec = {"test", dim};
  m.vectors.resize(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int d = 0; d < dim; ++d) ss += std::pow(m.vectors[r * dim + d] = g(rng), 2);
    for (int d = 0; d < dim; ++d) m.vectors[r * dim + d] /= static_cast<float>(std::sqrt(ss));
    m.embedding_ids.push_back(r + 1);
    m.identity_ids.push_back(r % people + 1);
  }
  for (int p = 0; p < people; ++p)
    m.identities.push_back({p + 1, "p" + std::to_string(p), "{}", 0, 0});
  // Probes: gallery rows plus a little noise, so each has a clear nearest identity.
  const int64_t nq = 24;
  std::vector<float> probes(nq * dim);
  for (int64_t q = 0; q < nq; ++q)
    for (int d = 0; d < dim; ++d)
      probes[q * dim + d] = m.vectors[(q * 4099) % rows * dim + d] + 0.01f * g(rng);
  Identifier fp32(m, Device::kCpu, CpuStorage::kFloat32);
  Identifier automatic(m, Device::kCpu);
  EXPECT_EQ(fp32.cpu_storage(), CpuStorage::kFloat32);
  EXPECT_EQ(automatic.cpu_storage(), cpu_has_bf16() ? CpuStorage::kBFloat16 : CpuStorage::kFloat32);
  const auto want = fp32.identify(probes.data(), nq, 5, 0.7);
  const auto got = automatic.identify(probes.data(), nq, 5, 0.7);
  ASSERT_EQ(got.size(), want.size());
  for (int64_t q = 0; q < nq; ++q) {
    EXPECT_EQ(got[q].best, want[q].best) << "probe " << q;
    EXPECT_EQ(got[q].best, "p" + std::to_string((q * 4099) % rows % people)) << "probe " << q;
    ASSERT_EQ(got[q].top.size(), want[q].top.size());
    for (size_t i = 0; i < got[q].top.size(); ++i) {
      EXPECT_EQ(got[q].top[i].name, want[q].top[i].name) << "probe " << q << " rank " << i;
      EXPECT_NEAR(got[q].top[i].distance, want[q].top[i].distance, 1e-5);
    }
  }
}

}  // namespace
}  // namespace facenet
