// Gallery integrity: identity names, per-row checksums, `gallery check`, refusing writes into a
// damaged file, the schema 1 -> 2 migration, the search snapshot and its invalidation, and the
// resumable `enroll --from-dirs` that skips bad person folders alone.
#include <omp.h>
#include <sqlite3.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/core/error.h"
#include "engine/search/gallery.h"
#include "engine/search/recognition.h"
#include "tests/cli_fixture.h"
#include "tests/gallery_fixture.h"
#include "tests/test_util.h"

namespace facenet {
namespace {

using test::expect_error;

namespace fs = std::filesystem;

using test::kSpec;
using test::synthetic;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The rows of `m`, wherever they are (copied out of a mapped snapshot).
std::vector<float> rows(const GalleryMatrix& m) {
  return std::vector<float>(m.row_data(), m.row_data() + m.rows() * m.spec.dim);
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
}

void sql(const std::string& path, const char* statement) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  const int rc = sqlite3_exec(db, statement, nullptr, nullptr, &err);
  EXPECT_EQ(rc, SQLITE_OK) << statement << ": " << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}

class GalleryIntegrity : public test::GalleryFixture {
 protected:
  // Flips one byte of the stored vector of embedding row `row` (0-based, enrolment order) in
  // the database file itself, below SQLite: the page stays structurally valid.
  void flip_vector_byte(int person, int row_in_person) {
    const auto x = synthetic(row_in_person + 1, kSpec.dim, person);
    std::string bytes = read_bytes(path_);
    const std::string needle(reinterpret_cast<const char*>(x.data() + row_in_person * kSpec.dim),
                             kSpec.dim * sizeof(float));
    const size_t at = bytes.find(needle);
    ASSERT_NE(at, std::string::npos);
    bytes[at + 37] ^= 0x10;
    write_bytes(path_, bytes);
  }
};

TEST_F(GalleryIntegrity, NamesMustBeValidUtf8WithoutControlCharacters) {
  Gallery g = Gallery::create(path_, {kSpec});
  const auto x = synthetic(1, kSpec.dim, 1);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"bad\xff", "UTF-8"},
      {"\xc0\xaf", "UTF-8"},  // invalid byte, overlong '/'
      {"\xed\xa0\x80", "UTF-8"},
      {"ab\xe2\x82", "UTF-8"},  // surrogate, truncated
      {"a\nb", "control"},
      {"tab\there", "control"},  // C0
      {"del\x7f", "control"},
      {"nel\xc2\x85", "control"},  // DEL, C1 (U+0085)
      {"", "empty"}};
  for (const auto& [name, why] : bad) {
    expect_error([&] { g.enroll(name, kSpec, x.data(), 1); }, {why});
    expect_error([&] { g.add_identity(name); }, {why});
    BulkEnroller bulk = g.bulk_enroller(kSpec);
    expect_error([&] { bulk.add(name, x.data(), 1); }, {why});
  }
  EXPECT_TRUE(g.list_identities().empty());
  for (const std::string ok : {"Zo\xc3\xab", "\xe6\x9d\x8e \xe9\x9b\xb7", "O'Brien-Smith"})
    EXPECT_EQ(g.enroll(ok, kSpec, x.data(), 1).name, ok);
}

TEST_F(GalleryIntegrity, FlippedVectorByteIsFoundByCheckAndRefusedByLoadsAndWrites) {
  populate(3, 4);
  {
    Gallery g = Gallery::open(path_, GalleryMode::kRead);
    const GalleryCheck c = g.check();
    EXPECT_TRUE(c.ok()) << c.sqlite;
    EXPECT_EQ(c.rows, 12);
    EXPECT_EQ(c.unverified, 0);
  }
  flip_vector_byte(1, 2);  // person1's third row: embedding id 7
  Gallery g = Gallery::open(path_, GalleryMode::kRead);
  const GalleryCheck c = g.check();
  EXPECT_EQ(c.sqlite, "ok");  // SQLite's own check cannot see it
  ASSERT_EQ(c.damaged.size(), 1u);
  EXPECT_EQ(c.damaged[0].embedding_id, 7);
  EXPECT_EQ(c.damaged[0].identity, "person1");
  EXPECT_FALSE(c.ok());
  expect_error([&] { g.load_all(); }, {"embedding 7", "person1", "checksum"});
  expect_error([&] { g.load_identity("person1"); }, {"embedding 7", "checksum"});
  EXPECT_EQ(g.load_identity("person0").rows(), 4u);  // undamaged rows still load
  expect_error([&] { g.load_for_search(); }, {"checksum"});
  expect_error([&] { Gallery::open(path_, GalleryMode::kWrite); },
               {path_, "damaged", "embedding 7", "refusing to write"});
}

TEST_F(GalleryIntegrity, StructurallyMalformedFileIsRefusedForWrites) {
  populate(60, 20);  // ~1200 rows: the embeddings span many pages
  std::string bytes = read_bytes(path_);
  ASSERT_GT(bytes.size(), 40u * 4096);
  // Garbage over one interior page of the embeddings table: SQLite's structure check fails.
  for (size_t i = 20 * 4096; i < 21 * 4096; ++i) bytes[i] = static_cast<char>(i * 131);
  write_bytes(path_, bytes);
  try {
    Gallery::open(path_, GalleryMode::kWrite);
    FAIL() << "a malformed gallery was opened for writing";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path_), std::string::npos) << msg;
    EXPECT_TRUE(msg.find("damaged") != std::string::npos ||
                msg.find("corrupt") != std::string::npos)
        << msg;
  }
}

TEST_F(GalleryIntegrity, SchemaOneGalleriesAreReadableAndMigratedOnFirstWrite) {
  populate(2, 3);
  // Make it the schema 1 layout: no checksum column, no generation.
  sql(path_,
      "ALTER TABLE embeddings DROP COLUMN checksum; PRAGMA user_version=1; "
      "UPDATE meta SET value='1' WHERE key='schema_version'; "
      "DELETE FROM meta WHERE key='generation';");
  {
    Gallery g = Gallery::open(path_, GalleryMode::kRead);
    EXPECT_EQ(g.load_all().rows(), 6u);
    EXPECT_EQ(g.generation(), 0);
    const GalleryCheck c = g.check();
    EXPECT_TRUE(c.ok());
    EXPECT_EQ(c.unverified, 6);
    EXPECT_EQ(g.load_for_search().rows(), 6u);
    EXPECT_FALSE(fs::exists(g.snapshot_path()));  // no generation to key a snapshot on
  }
  {
    Gallery g = Gallery::open(path_, GalleryMode::kWrite);
    EXPECT_EQ(g.stats().schema_version, 2);
    EXPECT_GT(g.generation(), 0);
  }
  Gallery g = Gallery::open(path_, GalleryMode::kRead);
  const GalleryCheck c = g.check();
  EXPECT_TRUE(c.ok());
  EXPECT_EQ(c.unverified, 0);
  EXPECT_EQ(c.rows, 6);
}

TEST_F(GalleryIntegrity, EveryWriteBumpsTheGeneration) {
  Gallery g = Gallery::create(path_, {kSpec});
  int64_t gen = g.generation();
  const auto x = synthetic(2, kSpec.dim, 3);
  auto bumped = [&] {
    const int64_t now = g.generation();
    const bool up = now > gen;
    gen = now;
    return up;
  };
  g.enroll("a", kSpec, x.data(), 2);
  EXPECT_TRUE(bumped());
  g.add_identity("b");
  EXPECT_TRUE(bumped());
  g.add_embeddings("b", kSpec, x.data(), 1);
  EXPECT_TRUE(bumped());
  {
    BulkEnroller bulk = g.bulk_enroller(kSpec);
    bulk.add("c", x.data(), 2);
    bulk.finish();
  }
  EXPECT_TRUE(bumped());
  g.remove_identity("a");
  EXPECT_TRUE(bumped());
  g.list_identities();
  g.load_all();
  EXPECT_FALSE(bumped());  // reads do not
}

TEST_F(GalleryIntegrity, SnapshotOfARestoredGalleryIsNotTrustedAtTheSameGeneration) {
  // A backup restored, then as many writes as before it: the generation number repeats with
  // other contents, and the old snapshot (still beside the file) must not be used.
  populate(1, 1);
  const std::string backup = (dir_ / "backup.db").string();
  fs::copy_file(path_, backup);
  auto enrol_two = [&](const std::string& a, const std::string& b) {
    Gallery g = Gallery::open(path_, GalleryMode::kWrite);
    const auto x = synthetic(1, kSpec.dim, 77);
    g.enroll(a, kSpec, x.data(), 1);
    g.enroll(b, kSpec, x.data(), 1);
    return g.load_for_search();  // writes the snapshot of this generation
  };
  auto names = [](const GalleryMatrix& m) {
    std::vector<std::string> out;
    for (const Identity& who : m.identities) out.push_back(who.name);
    return out;
  };
  const GalleryMatrix before = enrol_two("alice", "bob");
  ASSERT_TRUE(fs::exists(path_ + ".snapshot"));
  fs::copy_file(backup, path_, fs::copy_options::overwrite_existing);
  const GalleryMatrix after = enrol_two("carol", "dave");
  EXPECT_EQ(names(before), (std::vector<std::string>{"person0", "alice", "bob"}));
  EXPECT_EQ(names(after), (std::vector<std::string>{"person0", "carol", "dave"}));
}

TEST_F(GalleryIntegrity, SnapshotIsUsedWhileCurrentAndInvalidatedByEnrolAndRemove) {
  populate(3, 2);
  Gallery w = Gallery::open(path_, GalleryMode::kWrite);
  Gallery r = Gallery::open(path_, GalleryMode::kRead);
  const GalleryMatrix first = r.load_for_search();
  ASSERT_TRUE(fs::exists(r.snapshot_path()));
  const int64_t created = r.snapshot_key();
  const auto snap = read_gallery_snapshot(r.snapshot_path(), r.generation(), created);
  ASSERT_TRUE(snap.has_value());
  EXPECT_NE(snap->mapped_rows, nullptr);  // read in place, not copied
  EXPECT_TRUE(snap->vectors.empty());
  EXPECT_EQ(rows(*snap), rows(first));
  EXPECT_EQ(snap->embedding_ids, first.embedding_ids);
  EXPECT_EQ(snap->identity_ids, first.identity_ids);
  ASSERT_EQ(snap->identities.size(), 3u);
  EXPECT_EQ(snap->identities[2].name, "person2");
  EXPECT_EQ(snap->spec.model, kSpec.model);
  const GalleryMatrix again = r.load_for_search();
  EXPECT_NE(again.mapped_rows, nullptr);  // served from the snapshot
  EXPECT_EQ(rows(again), rows(first));

  const auto x = synthetic(1, kSpec.dim, 99);
  w.enroll("newcomer", kSpec, x.data(), 1);
  std::string why;
  EXPECT_FALSE(read_gallery_snapshot(r.snapshot_path(), r.generation(), created, &why));
  EXPECT_NE(why.find("stale"), std::string::npos) << why;
  GalleryMatrix after = r.load_for_search();
  EXPECT_EQ(after.rows(), 7u);
  EXPECT_EQ(after.name_of(after.identity_ids.back()), "newcomer");

  w.remove_identity("person0");
  after = r.load_for_search();
  EXPECT_EQ(after.rows(), 5u);
  for (const Identity& who : after.identities) EXPECT_NE(who.name, "person0");
  EXPECT_EQ(rows(after), r.load_all().vectors);
}

TEST_F(GalleryIntegrity, StaleTruncatedOrCorruptSnapshotsAreNeverTrusted) {
  populate(3, 2);
  Gallery r = Gallery::open(path_, GalleryMode::kRead);
  const GalleryMatrix truth = r.load_all();
  r.load_for_search();
  const std::string good = read_bytes(r.snapshot_path());
  const int64_t gen = r.generation(), created = r.snapshot_key();

  auto rejected = [&](const std::string& bytes, const std::string& reason) {
    write_bytes(r.snapshot_path(), bytes);
    std::string why;
    EXPECT_FALSE(read_gallery_snapshot(r.snapshot_path(), gen, created, &why)) << reason;
    EXPECT_NE(why.find(reason), std::string::npos) << why;
    EXPECT_EQ(rows(r.load_for_search()), truth.vectors) << reason;  // rebuilt from SQLite
    EXPECT_TRUE(read_gallery_snapshot(r.snapshot_path(), gen, created)) << reason;  // rewritten
  };
  std::string flipped = good;
  flipped[4096 + 100] ^= 1;  // a vector byte
  rejected(flipped, "hash");
  std::string names = good;
  names[names.size() - 3] ^= 1;  // in the identity table
  rejected(names, "hash");
  rejected(good.substr(0, good.size() - 8), "truncated");
  rejected(good.substr(0, 100), "shorter");
  std::string header = good;
  header[20] ^= 1;
  rejected(header, "header");
  rejected("not a snapshot at all", "shorter");

  EXPECT_FALSE(read_gallery_snapshot(r.snapshot_path(), gen + 1, created));  // other generation
  EXPECT_FALSE(read_gallery_snapshot(r.snapshot_path(), gen, created + 1));  // other gallery
  EXPECT_FALSE(read_gallery_snapshot((dir_ / "missing").string(), gen, created));
}

TEST_F(GalleryIntegrity, IdentifierSearchesAMappedSnapshotInPlaceWithTheSameResults) {
  populate(40, 3);
  Gallery r = Gallery::open(path_, GalleryMode::kRead);
  r.load_for_search();  // writes the snapshot
  GalleryMatrix mapped = r.load_for_search();
  ASSERT_NE(mapped.mapped_rows, nullptr);
  Identifier in_place(std::move(mapped), Device::kCpu);
  Identifier copied(r.load_all(), Device::kCpu);
  const auto probes = synthetic(5, kSpec.dim, 7);
  const auto a = in_place.identify(probes.data(), 5, 3, 1.0);
  const auto b = copied.identify(probes.data(), 5, 3, 1.0);
  ASSERT_EQ(a.size(), b.size());
  for (size_t q = 0; q < a.size(); ++q) {
    ASSERT_EQ(a[q].top.size(), 3u);
    for (size_t i = 0; i < a[q].top.size(); ++i) {
      EXPECT_EQ(a[q].top[i].name, b[q].top[i].name) << q << " " << i;
      EXPECT_EQ(a[q].top[i].distance, b[q].top[i].distance) << q << " " << i;
    }
  }
}

TEST(GalleryHash, PiecewiseHashingEqualsOneCallAndSeesEveryByte) {
  std::mt19937 rng(5);
  std::string bytes(1000, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  for (size_t len : {0, 1, 7, 8, 31, 32, 33, 100, 1000}) {
    const uint64_t whole = gallery_hash64(bytes.data(), len, 9);
    for (size_t cut : {0, 1, 5, 31, 32, 40}) {
      if (cut > len) continue;
      GalleryHasher h(9);
      h.update(bytes.data(), cut);
      h.update(bytes.data() + cut, (len - cut) / 2);
      h.update(bytes.data() + cut + (len - cut) / 2, len - cut - (len - cut) / 2);
      EXPECT_EQ(h.digest(), whole) << len << " cut at " << cut;
    }
    for (size_t i = 0; i < len; i += 13) {  // one flipped bit anywhere changes the hash
      std::string flipped = bytes.substr(0, len);
      flipped[i] ^= 4;
      EXPECT_NE(gallery_hash64(flipped.data(), len, 9), whole) << len << " at " << i;
    }
  }
  EXPECT_NE(gallery_hash64(bytes.data(), 64, 1), gallery_hash64(bytes.data(), 64, 2));
}

TEST(GalleryHash, ChunkedHashIsTheSameOnAnyThreadCountAndSeesEveryChunk) {
  // 8 MiB chunks: 20 MiB + 3 bytes is two whole chunks and a short one.
  std::mt19937 rng(6);
  std::vector<unsigned char> bytes((size_t{20} << 20) + 3);
  for (auto& b : bytes) b = static_cast<unsigned char>(rng());
  omp_set_num_threads(1);
  const uint64_t one = gallery_hash64_chunked(bytes.data(), bytes.size(), 3);
  omp_set_num_threads(2);
  const uint64_t two = gallery_hash64_chunked(bytes.data(), bytes.size(), 3);
  omp_set_num_threads(omp_get_num_procs());
  EXPECT_EQ(one, two);
  EXPECT_NE(gallery_hash64_chunked(bytes.data(), bytes.size(), 4), one);  // the seed counts
  for (size_t at : {size_t{0}, (size_t{8} << 20) - 1, size_t{8} << 20, (size_t{16} << 20) + 5,
                    bytes.size() - 1}) {
    bytes[at] ^= 1;
    EXPECT_NE(gallery_hash64_chunked(bytes.data(), bytes.size(), 3), one) << "flip at " << at;
    bytes[at] ^= 1;
  }
  // Swapping two whole chunks changes it (each chunk is seeded with its index), and so does
  // dropping a trailing zero byte (the length is hashed).
  std::vector<unsigned char> swapped(bytes);
  std::swap_ranges(swapped.begin(), swapped.begin() + (8 << 20), swapped.begin() + (8 << 20));
  EXPECT_NE(gallery_hash64_chunked(swapped.data(), swapped.size(), 3), one);
  bytes.push_back(0);
  EXPECT_NE(gallery_hash64_chunked(bytes.data(), bytes.size(), 3), one);
}

TEST_F(GalleryIntegrity, BulkReplaceSwapsAnIdentitysEmbeddings) {
  populate(2, 3);
  Gallery g = Gallery::open(path_, GalleryMode::kWrite);
  const auto x = synthetic(2, kSpec.dim, 42);
  BulkEnroller bulk = g.bulk_enroller(kSpec);
  bulk.add("person1", x.data(), 2, {}, "", /*replace=*/true);
  bulk.finish();
  EXPECT_EQ(g.find_identity("person1").embeddings, 2);
  EXPECT_EQ(g.load_identity("person1").vectors, x);
  EXPECT_EQ(g.find_identity("person0").embeddings, 3);
  EXPECT_TRUE(g.check().ok());
}

// ---- The CLI -----------------------------------------------------------------------------

class GalleryIntegrityCli : public test::Cli {
 protected:
  std::string gallery() { return (dir_ / "g.db").string(); }
  // <dir>/people/<name>/ holding links to the given happy-house crops.
  fs::path people(const std::vector<std::pair<std::string, std::vector<std::string>>>& who) {
    const fs::path root = dir_ / "people";
    for (const auto& [name, images] : who) {
      fs::create_directories(root / name);
      for (const auto& img : images) fs::create_symlink(happy(img), root / name / img);
    }
    return root;
  }
  test::CliResult from_dirs(const fs::path& root, const std::string& extra = "") {
    return run("enroll --create --gallery " + gallery() + " --model " + model() + " --from-dirs '" +
               root.string() + "'" + extra);
  }
  nlohmann::json stats() {
    return nlohmann::json::parse(run("gallery stats --gallery " + gallery()).out);
  }
};

TEST_F(GalleryIntegrityCli, FromDirsSkipsBadPeopleAloneAndResumesWithoutDuplicates) {
  const fs::path root = people({{"andrew", {"andrew.jpg"}},
                                {"benoit", {"benoit.jpg", "bertrand.jpg"}},
                                {"looped", {}},
                                {"zed", {"kian.jpg"}}});
  fs::create_symlink("self.jpg", root / "looped" / "self.jpg");  // a file-symlink loop
  fs::create_symlink("cycle", root / "cycle");                   // a person entry that loops
  fs::create_directories(root /
                         "bad\xff"
                         "name");
  fs::create_symlink(happy("tian.jpg"), root /
                                            "bad\xff"
                                            "name" /
                                            "t.jpg");

  auto r = from_dirs(root);
  EXPECT_EQ(r.status, 1) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["people"], 3);  // andrew, benoit and zed: the bad folders are skipped alone
  EXPECT_EQ(j["embeddings"], 4);
  EXPECT_GE(j["skipped_people"].get<int>(), 3);
  EXPECT_NE(r.err.find("looped"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("cycle"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("UTF-8"), std::string::npos) << r.err;

  r = from_dirs(root);              // the natural recovery: run it again
  EXPECT_EQ(r.status, 1) << r.err;  // the bad folders are still bad
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["people"], 0);
  EXPECT_EQ(j["already_enrolled"], 3);
  EXPECT_NE(r.err.find("'benoit' is already enrolled"), std::string::npos) << r.err;
  EXPECT_EQ(stats()["embeddings"], 4);  // nobody duplicated

  fs::remove_all(root / "looped");
  fs::remove(root / "cycle");
  fs::remove_all(root /
                 "bad\xff"
                 "name");
  fs::create_symlink(happy("kevin.jpg"), root / "benoit" / "kevin.jpg");
  r = from_dirs(root, " --reenroll");
  EXPECT_EQ(r.status, 0) << r.err;
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["people"], 3);
  EXPECT_EQ(stats()["embeddings"], 5);  // replaced, not appended: benoit now has 3
}

TEST_F(GalleryIntegrityCli, BadNamesAreArgumentErrors) {
  const auto r = run("enroll --create --gallery " + gallery() + " --model " + model() +
                     " --name \"$(printf 'a\\001b')\" " + happy("tian.jpg"));
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("control character"), std::string::npos) << r.err;
}

TEST_F(GalleryIntegrityCli, CheckReportsDamageAndWritesAreRefused) {
  auto r = run("enroll --create --gallery " + gallery() + " --model " + model() + " --name tian " +
               happy("tian.jpg") + " " + happy("kian.jpg"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = run("gallery check --json --gallery " + gallery());
  EXPECT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["ok"].get<bool>());
  EXPECT_EQ(j["rows"], 2);

  // Damage one stored vector below SQLite.
  {
    Gallery g = Gallery::open(gallery(), GalleryMode::kRead);
    const GalleryMatrix m = g.load_all();
    std::string bytes = read_bytes(gallery());
    const std::string needle(reinterpret_cast<const char*>(m.vectors.data() + m.spec.dim),
                             m.spec.dim * sizeof(float));
    const size_t at = bytes.find(needle);
    ASSERT_NE(at, std::string::npos);
    bytes[at + 9] ^= 0x40;
    write_bytes(gallery(), bytes);
  }
  r = run("gallery check --json --gallery " + gallery());
  EXPECT_EQ(r.status, 2) << r.err;
  j = nlohmann::json::parse(r.out);
  EXPECT_FALSE(j["ok"].get<bool>());
  EXPECT_EQ(j["sqlite"], "ok");
  ASSERT_EQ(j["damaged"].size(), 1u);
  EXPECT_EQ(j["damaged"][0]["embedding_id"], 2);
  EXPECT_EQ(j["damaged"][0]["identity"], "tian");
  r = run("gallery check --gallery " + gallery());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("DAMAGED"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("embedding 2 of identity"), std::string::npos) << r.out;

  r = run("enroll --gallery " + gallery() + " --model " + model() + " --name kian " +
          happy("kian.jpg"));
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("refusing to write"), std::string::npos) << r.err;
  r = run("gallery remove --gallery " + gallery() + " --name tian");
  EXPECT_EQ(r.status, 2) << r.err;
  r = run("identify --gallery " + gallery() + " --model " + model() + " " + happy("tian.jpg"));
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("checksum"), std::string::npos) << r.err;
}

TEST_F(GalleryIntegrityCli, IdentifySeesEveryEnrolAndRemove) {
  auto enrol = [&](const char* name, const char* img) {
    const auto r = run("enroll --create --gallery " + gallery() + " --model " + model() +
                       " --name " + name + " " + happy(img));
    ASSERT_EQ(r.status, 0) << r.err;
  };
  auto best = [&](const char* img) {
    const auto r = run("identify --k 1 --threshold 10 --gallery " + gallery() + " --model " +
                       model() + " " + happy(img));
    EXPECT_EQ(r.status, 0) << r.err;
    return nlohmann::json::parse(r.out)["identity"].get<std::string>();
  };
  enrol("andrew", "andrew.jpg");
  enrol("kian", "kian.jpg");
  EXPECT_EQ(best("kian.jpg"), "kian");
  EXPECT_TRUE(fs::exists(gallery() + ".snapshot"));
  EXPECT_EQ(best("kian.jpg"), "kian");  // from the snapshot
  ASSERT_EQ(run("gallery remove --gallery " + gallery() + " --name kian").status, 0);
  EXPECT_EQ(best("kian.jpg"), "andrew");
  enrol("tian", "kian.jpg");  // the same face under another name
  EXPECT_EQ(best("kian.jpg"), "tian");
}

}  // namespace
}  // namespace facenet
