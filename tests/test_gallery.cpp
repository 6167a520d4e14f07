// Gallery store: round trips, model guard, bad input, corrupt files, crash durability and a
// reader running beside a writer process.
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/core/error.h"
#include "engine/search/gallery.h"
#include "tests/gallery_fixture.h"
#include "tests/test_util.h"

namespace facenet {
namespace {

using test::expect_error;

namespace fs = std::filesystem;

using test::kSpec;
using test::synthetic;

class GalleryTest : public test::GalleryFixture {};

TEST_F(GalleryTest, CreateEnrollListLoadRemoveRoundTrip) {
  const auto alice = synthetic(3, kSpec.dim, 1);
  const auto bob = synthetic(2, kSpec.dim, 2);
  {
    Gallery g = Gallery::create(path_, {kSpec});
    const Identity a = g.enroll("alice", kSpec, alice.data(), 3, {"a0.jpg", "a1.jpg", "a2.jpg"});
    EXPECT_EQ(a.name, "alice");
    EXPECT_EQ(a.embeddings, 3);
    EXPECT_EQ(a.metadata, "{}");
    EXPECT_GT(a.created_at, 0);
    g.add_identity("bob", R"({"team": "blue"})");
    EXPECT_EQ(g.add_embeddings("bob", kSpec, bob.data(), 2).embeddings, 2);
  }
  Gallery g = Gallery::open(path_, GalleryMode::kRead);
  const auto all = g.list_identities();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name, "alice");
  EXPECT_EQ(all[1].name, "bob");
  EXPECT_EQ(all[1].metadata, R"({"team":"blue"})");
  EXPECT_EQ(all[1].embeddings, 2);
  EXPECT_TRUE(g.has_identity("bob"));
  EXPECT_FALSE(g.has_identity("carol"));
  EXPECT_EQ(g.find_identity("alice").id, all[0].id);

  const GalleryStats st = g.stats();
  EXPECT_EQ(st.identities, 2);
  EXPECT_EQ(st.embeddings, 5);
  EXPECT_EQ(st.spec.model, kSpec.model);
  EXPECT_EQ(st.spec.dim, kSpec.dim);
  EXPECT_EQ(st.schema_version, 2);
  EXPECT_GT(st.file_bytes, 0u);

  // Vectors come back bit-exact, in enrolment order, labelled with their identity.
  const GalleryMatrix m = g.load_all(kSpec.model);
  ASSERT_EQ(m.rows(), 5u);
  std::vector<float> expected(alice);
  expected.insert(expected.end(), bob.begin(), bob.end());
  EXPECT_EQ(m.vectors, expected);
  for (size_t r = 0; r < m.rows(); ++r)
    EXPECT_EQ(m.name_of(m.identity_ids[r]), r < 3 ? "alice" : "bob") << "row " << r;
  expect_error([&] { m.name_of(12345); }, {"12345"});

  const GalleryMatrix b = g.load_identity("bob");
  EXPECT_EQ(b.vectors, bob);
  ASSERT_EQ(b.identities.size(), 1u);
  EXPECT_EQ(b.identities[0].name, "bob");
  EXPECT_EQ(g.quick_check(), "ok");

  Gallery w = Gallery::open(path_, GalleryMode::kWrite);
  EXPECT_EQ(w.remove_identity("alice"), 3);
  EXPECT_EQ(w.stats().embeddings, 2);  // the cascade took alice's embeddings
  EXPECT_EQ(g.load_all().vectors, bob);
  expect_error([&] { Gallery::create(path_); }, {path_, "already exists"});
}

TEST_F(GalleryTest, FirstEnrolmentFixesTheModelOfAnUntypedGallery) {
  Gallery g = Gallery::create(path_);
  EXPECT_TRUE(g.stats().spec.model.empty());
  const auto x = synthetic(1, 16, 3);
  g.enroll("x", {"tiny", 16}, x.data(), 1);
  EXPECT_EQ(g.stats().spec.model, "tiny");
  EXPECT_EQ(g.stats().spec.dim, 16);
}

TEST_F(GalleryTest, RefusesToMixModelsOrDimensions) {
  populate(1, 2);
  Gallery g = Gallery::open(path_, GalleryMode::kWrite);
  const auto x = synthetic(1, 128, 4);
  expect_error(
      [&] {
        g.enroll("eve", {"other-model", 128}, x.data(), 1);
      },
      {path_, "'nn4.small2.v1'", "'other-model'"});
  expect_error([&] { g.enroll("eve", {kSpec.model, 64}, x.data(), 1); }, {"128", "64"});
  expect_error([&] { g.bulk_enroller({"other-model", 128}); }, {"nn4.small2.v1", "other-model"});
  expect_error([&] { g.load_all("other-model"); }, {"nn4.small2.v1", "other-model"});
  // A model fixed at create time is enforced before any embedding exists.
  Gallery typed = Gallery::create((dir_ / "typed.db").string(), {kSpec});
  expect_error([&] { typed.enroll("eve", {"other-model", 128}, x.data(), 1); }, {"other-model"});
  EXPECT_EQ(g.stats().embeddings, 2);
  EXPECT_FALSE(g.has_identity("eve"));
}

TEST_F(GalleryTest, UnknownNamesAreNamedInTheError) {
  populate(2, 1);
  Gallery g = Gallery::open(path_, GalleryMode::kWrite);
  const auto x = synthetic(1, 128, 5);
  for (const auto& op : std::vector<std::function<void()>>{
           [&] { g.find_identity("nobody"); }, [&] { g.remove_identity("nobody"); },
           [&] { g.add_embeddings("nobody", kSpec, x.data(), 1); },
           [&] { g.load_identity("nobody"); }})
    expect_error(op, {"unknown identity 'nobody'", path_, "2 identities"});
}

TEST_F(GalleryTest, EmptyGalleryListsNothingAndRefusesToLoad) {
  Gallery g = Gallery::create(path_, {kSpec});
  EXPECT_TRUE(g.list_identities().empty());
  EXPECT_EQ(g.stats().embeddings, 0);
  expect_error([&] { g.load_all(); }, {path_, "is empty"});
  g.add_identity("nobody-yet");
  expect_error([&] { g.load_identity("nobody-yet"); }, {"nobody-yet", "no embeddings"});
}

TEST_F(GalleryTest, BadInputIsRefusedAndLeavesTheGalleryUnchanged) {
  populate(1, 1);
  Gallery g = Gallery::open(path_, GalleryMode::kWrite);
  auto x = synthetic(2, 128, 6);
  x[130] = std::nanf("");
  expect_error(
      [&] {
        g.enroll("nan", kSpec, x.data(), 2, {"a.jpg", "b.jpg"});
      },
      {"nan", "b.jpg", "non-finite"});
  x[130] = 0.f;
  expect_error([&] { g.enroll("src", kSpec, x.data(), 2, {"a.jpg"}); }, {"1 sources for 2"});
  expect_error([&] { g.enroll("", kSpec, x.data(), 1); }, {"name must not be empty"});
  expect_error([&] { g.enroll("zero", kSpec, x.data(), 0); }, {"no embeddings", "zero"});
  expect_error([&] { g.enroll("meta", kSpec, x.data(), 1, {}, "[1,2]"); }, {"JSON object"});
  expect_error([&] { g.add_identity("person0"); }, {"'person0' already exists"});
  expect_error([&] { g.enroll("x", {"", 128}, x.data(), 1); }, {"model name"});
  EXPECT_EQ(g.stats().identities, 1);
  EXPECT_EQ(g.stats().embeddings, 1);

  Gallery r = Gallery::open(path_, GalleryMode::kRead);
  expect_error([&] { r.enroll("ro", kSpec, x.data(), 1); }, {path_, "read-only"});
  expect_error([&] { r.bulk_enroller(kSpec); }, {"read-only"});
}

TEST_F(GalleryTest, MissingGarbageAndForeignFilesAreNotGalleries) {
  expect_error([&] { Gallery::open(path_, GalleryMode::kRead); }, {path_, "does not exist"});

  std::ofstream(path_, std::ios::binary) << std::string(8192, '\x5a');
  expect_error([&] { Gallery::open(path_, GalleryMode::kRead); }, {path_, "not a facenet gallery"});
  std::ofstream(path_, std::ios::binary | std::ios::trunc).close();  // empty file
  expect_error([&] { Gallery::open(path_, GalleryMode::kWrite); }, {"not a facenet gallery"});

  const std::string other = (dir_ / "other.sqlite").string();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(other.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE t(x)", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  expect_error([&] { Gallery::open(other, GalleryMode::kRead); }, {other, "not a facenet gallery"});
}

TEST_F(GalleryTest, TruncatedGalleryIsReportedCorrupt) {
  populate(200, 20);  // 4000 x 512 B vectors: a few MB over many pages
  const auto size = fs::file_size(path_);
  ASSERT_FALSE(fs::exists(path_ + "-wal")) << "the last close should checkpoint the WAL";
  fs::resize_file(path_, size / 2);
  expect_error(
      [&] {
        Gallery g = Gallery::open(path_, GalleryMode::kRead);
        g.load_all();
      },
      {path_, "corrupt"});
}

TEST_F(GalleryTest, BulkEnrollerCommitsWholePeopleInBatches) {
  Gallery g = Gallery::create(path_);
  std::vector<BulkProgress> reports;
  BulkOptions opts;
  opts.commit_rows = 10;
  opts.commit_seconds = 1e9;
  opts.on_commit = [&](const BulkProgress& p) { reports.push_back(p); };
  const auto x = synthetic(4, kSpec.dim, 7);
  {
    BulkEnroller bulk = g.bulk_enroller(kSpec, opts);
    for (int p = 0; p < 7; ++p) bulk.add("p" + std::to_string(p), x.data(), 4);
    // 3 people (12 rows) reach the threshold: commits after people 3 and 6; one is pending.
    ASSERT_EQ(reports.size(), 2u);
    EXPECT_EQ(reports[1].embeddings, 24);
    EXPECT_EQ(reports[1].identities, 6);
    EXPECT_EQ(reports[1].commits, 2);
    EXPECT_EQ(bulk.finish().embeddings, 28);
    bulk.add("p7", x.data(), 4);
    // A bad person is refused whole and the pending batch survives it.
    expect_error([&] { bulk.add("bad", x.data(), 4, {"only-one.jpg"}); }, {"bad"});
    bulk.add("p8", x.data(), 4);
    EXPECT_EQ(g.stats().embeddings, 36);  // same connection: pending rows are visible
    // Destroyed unfinished: the pending batch (p7, p8) is rolled back.
  }
  EXPECT_EQ(g.stats().embeddings, 28);
  EXPECT_FALSE(g.has_identity("p7"));
  EXPECT_EQ(g.stats().spec.model, kSpec.model);  // fixed by the first committed batch
  g.enroll("after-bulk", kSpec, x.data(), 1);    // the handle is writable again
}

// A writer process SIGKILLed in the middle of a large bulk enrolment: every batch it reported
// committed is there, nothing else but possibly the one batch it had no time to report, and the
// file is sound and writable.
TEST_F(GalleryTest, SigkillDuringBulkEnrolmentKeepsEveryCommittedBatch) {
  constexpr int kPerPerson = 8, kCommitRows = 2000, kPeople = 50000;  // 400k rows planned
  constexpr int kKillAfterCommits = 10;
  Gallery::create(path_, {kSpec});
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(fds[0]);
    try {
      Gallery g = Gallery::open(path_, GalleryMode::kWrite);
      BulkOptions opts;
      opts.commit_rows = kCommitRows;
      opts.commit_seconds = 1e9;
      opts.on_commit = [&](const BulkProgress& p) {
        if (write(fds[1], &p.embeddings, sizeof p.embeddings) != sizeof p.embeddings) _exit(3);
      };
      auto x = synthetic(kPerPerson, kSpec.dim, 8);
      BulkEnroller bulk = g.bulk_enroller(kSpec, opts);
      for (int p = 0; p < kPeople; ++p) {
        x[0] = static_cast<float>(p);
        bulk.add("p" + std::to_string(p), x.data(), kPerPerson);
      }
      bulk.finish();
    } catch (...) {
      _exit(2);
    }
    _exit(0);
  }
  close(fds[1]);
  int64_t reported = 0, reports = 0;
  while (reports < kKillAfterCommits && read(fds[0], &reported, sizeof reported) == 8) ++reports;
  ASSERT_EQ(reports, kKillAfterCommits) << "the writer stopped early";
  kill(child, SIGKILL);
  for (int64_t r; read(fds[0], &r, sizeof r) == 8;) reported = r;  // reports sent before death
  close(fds[0]);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the writer finished before the kill; raise kPeople";

  Gallery g = Gallery::open(path_, GalleryMode::kWrite);
  EXPECT_EQ(g.quick_check(), "ok");
  const GalleryStats st = g.stats();
  EXPECT_GE(st.embeddings, reported);
  EXPECT_LE(st.embeddings, reported + kCommitRows);  // at most one committed, unreported batch
  EXPECT_EQ(st.embeddings % kCommitRows, 0) << "a partial batch survived";
  EXPECT_EQ(st.embeddings, st.identities * kPerPerson);
  const GalleryMatrix m = g.load_all();
  for (const Identity& who : m.identities) ASSERT_EQ(who.embeddings, kPerPerson) << who.name;
  const auto x = synthetic(1, kSpec.dim, 9);
  EXPECT_EQ(g.enroll("after-crash", kSpec, x.data(), 1).embeddings, 1);
}

// A reader polling while another process enrols never fails on locks and sees the committed
// state only grow, in whole batches.
TEST_F(GalleryTest, ReaderSeesGrowingWholeBatchesWhileAnotherProcessEnrols) {
  constexpr int kPerPerson = 10, kPeople = 300, kCommitRows = 100;
  Gallery::create(path_, {kSpec});
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    try {
      Gallery g = Gallery::open(path_, GalleryMode::kWrite);
      BulkOptions opts;
      opts.commit_rows = kCommitRows;
      const auto x = synthetic(kPerPerson, kSpec.dim, 10);
      BulkEnroller bulk = g.bulk_enroller(kSpec, opts);
      for (int p = 0; p < kPeople; ++p) {
        bulk.add("p" + std::to_string(p), x.data(), kPerPerson);
        usleep(2000);  // stretch the run so reads interleave with commits
      }
      bulk.finish();
    } catch (...) {
      _exit(2);
    }
    _exit(0);
  }
  int64_t last = 0, reads = 0, status = 0;
  bool saw_partial = false;  // a state strictly between empty and done: reads overlapped writes
  int wstatus = 0;
  Gallery reader = Gallery::open(path_, GalleryMode::kRead);
  while (waitpid(child, &wstatus, WNOHANG) == 0) {
    const GalleryStats st = reader.stats();
    EXPECT_GE(st.embeddings, last);
    EXPECT_EQ(st.embeddings % kCommitRows, 0);
    last = st.embeddings;
    saw_partial = saw_partial || (last > 0 && last < kPeople * kPerPerson);
    if (st.embeddings > 0) {
      const GalleryMatrix m = reader.load_all();
      EXPECT_GE(static_cast<int64_t>(m.rows()), last);
      EXPECT_EQ(m.rows() % kCommitRows, 0u);
    }
    if (++reads % 10 == 0) {
      EXPECT_NO_THROW(Gallery::open(path_, GalleryMode::kRead).stats());
    }
  }
  status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
  ASSERT_EQ(status, 0) << "the writer failed";
  EXPECT_TRUE(saw_partial) << reads << " reads never overlapped the writer";
  EXPECT_EQ(reader.stats().embeddings, kPeople * kPerPerson);
  EXPECT_EQ(reader.list_identities().size(), static_cast<size_t>(kPeople));
}

}  // namespace
}  // namespace facenet
