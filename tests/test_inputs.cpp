// Hostile and damaged inputs: directory walks that meet unreadable entries and link loops,
// truncated and oversized images, odd file names in every output format, option ranges.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "apps/face_json.h"
#include "engine/image/image_decode.h"
#include "engine/image/image_io.h"
#include "engine/pipeline/pipeline.h"
#include "tests/cli_fixture.h"

namespace facenet {
namespace {

namespace fs = std::filesystem;
using test::Cli;
using test::CliResult;

std::vector<unsigned char> bytes_of(const fs::path& p) {
  return read_file_bytes(p);
}

void write_bytes(const fs::path& p, const std::vector<unsigned char>& b, size_t n) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), n);
}

fs::path lfw_photo() {  // 14.8 KB, 250x250
  return test::shared_path(
      "data/lfw/lfw-deepfunneled/Juan_Roman_Riquelme/Juan_Roman_Riquelme_0001.jpg");
}

std::vector<std::string> lines_of(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// A temporary directory for the library tests, removed afterwards.
class Inputs : public test::TempDirTest {
 protected:
  Inputs() : TempDirTest("facenet-inputs") {}
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_ / "locked", fs::perms::owner_all, ec);
    TempDirTest::TearDown();
  }
};

// ---- directory walks -------------------------------------------------------------------------

// A tree with two good images and every kind of entry the walk cannot follow.
void make_hostile_tree(const fs::path& d) {
  const fs::path img = test::shared_path("data/happy-house/images/andrew.jpg");
  fs::create_directories(d / "sub");
  fs::copy_file(img, d / "a.jpg");
  fs::copy_file(img, d / "sub" / "b.jpg");
  fs::create_symlink(d / "nowhere.jpg", d / "broken.jpg");  // dangling
  fs::create_symlink(d / "loop2.jpg", d / "loop1.jpg");     // file-symlink loop
  fs::create_symlink(d / "loop1.jpg", d / "loop2.jpg");
  fs::create_directory_symlink(d, d / "sub" / "back");           // directory loop
  fs::create_symlink(d / "a.jpg", d / "sub" / "link-to-a.jpg");  // followed
}

TEST_F(Inputs, WalkNamesBrokenLinksAndLoopsAndKeepsTheRest) {
  make_hostile_tree(dir_);
  std::vector<InputEntry> found;
  ASSERT_NO_THROW(found = expand_inputs({dir_.string()}));
  std::vector<std::string> ok, bad;
  for (const InputEntry& e : found)
    (e.ok() ? ok : bad).push_back(e.ok() ? e.path.filename().string() : e.error);
  EXPECT_EQ(ok, (std::vector<std::string>{"a.jpg", "b.jpg", "link-to-a.jpg"}));
  ASSERT_EQ(bad.size(), 3u);  // sorted: broken, loop1, loop2
  EXPECT_NE(bad[0].find("broken.jpg: symbolic link that cannot be followed"), std::string::npos)
      << bad[0];
  EXPECT_NE(bad[1].find("loop1.jpg"), std::string::npos) << bad[1];
  EXPECT_NE(bad[2].find("loop2.jpg"), std::string::npos) << bad[2];
  // file_inputs turns each into an input that fails as unreadable, in its place.
  std::vector<ImageInput> inputs = file_inputs({dir_.string()});
  ASSERT_EQ(inputs.size(), 6u);
  InputStatus status = InputStatus::kOk;
  test::expect_error([&] { inputs[1].decode(status); }, {"broken.jpg", "symbolic link"});
  EXPECT_EQ(status, InputStatus::kUnreadable);
}

// Root reads any directory whatever its mode, so the walk runs in a child that drops to
// nobody; the locked sub-directory is named, the readable image beside it kept.
TEST_F(Inputs, WalkNamesAnUnreadableDirectory) {
  fs::copy_file(test::shared_path("data/happy-house/images/andrew.jpg"), dir_ / "a.jpg");
  fs::create_directory(dir_ / "locked");
  fs::copy_file(dir_ / "a.jpg", dir_ / "locked" / "hidden.jpg");
  fs::permissions(dir_ / "locked", fs::perms::none);
  int fd[2];
  ASSERT_EQ(pipe(fd), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fd[0]);
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(3);
    std::string report;
    for (const InputEntry& e : expand_inputs({dir_.string()}))
      report += (e.ok() ? "ok " + e.path.filename().string() : "bad " + e.error) + "\n";
    if (write(fd[1], report.data(), report.size()) < 0) _exit(4);
    _exit(0);
  }
  close(fd[1]);
  std::string report;
  char buf[4096];
  for (ssize_t n; (n = read(fd[0], buf, sizeof buf)) > 0;) report.append(buf, n);
  close(fd[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 3) GTEST_SKIP() << "cannot drop root privileges here";
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << report;
  const std::vector<std::string> got = lines_of(report);
  ASSERT_EQ(got.size(), 2u) << report;
  EXPECT_EQ(got[0], "ok a.jpg");
  EXPECT_NE(got[1].find("locked: cannot read this directory (Permission denied)"),
            std::string::npos)
      << got[1];
}

// ---- image checks ----------------------------------------------------------------------------

TEST_F(Inputs, TruncatedJpegIsRefusedWithTheReason) {
  const std::vector<unsigned char> whole = bytes_of(lfw_photo());
  ASSERT_NO_THROW(decode_checked(whole, "whole.jpg"));
  EXPECT_EQ(structure_problem(whole.data(), whole.size()), "");
  for (const size_t n : {size_t{1024}, whole.size() / 2, whole.size() - 2}) {
    const std::vector<unsigned char> cut(whole.begin(), whole.begin() + n);
    test::expect_error([&] { decode_checked(cut, "cut.jpg"); }, {"cut.jpg", "truncated"});
  }
}

TEST_F(Inputs, TruncatedPngIsRefusedWithTheReason) {
  const std::vector<unsigned char> png =
      bytes_of(fs::path(__FILE__).parent_path() / "fuzz/corpus/image/rgb8.png");
  EXPECT_EQ(structure_problem(png.data(), png.size()), "");
  for (const size_t n : {size_t{30}, png.size() / 2, png.size() - 1}) {
    const std::vector<unsigned char> cut(png.begin(), png.begin() + n);
    test::expect_error([&] { decode_checked(cut, "cut.png"); }, {"cut.png", "PNG truncated"});
  }
}

// A stray marker in the middle of the compressed data: the structure is whole, but libjpeg
// warns (it decodes the rest as grey), and the warning refuses the image in every build.
TEST_F(Inputs, CorruptJpegIsRefusedByLibjpegsWarning) {
  std::vector<unsigned char> bad = bytes_of(lfw_photo());
  size_t at = bad.size() / 2;
  while (bad[at - 1] == 0xFF || bad[at] == 0xFF || bad[at + 1] == 0xFF) ++at;
  bad[at] = 0xFF;
  bad[at + 1] = 0xD4;  // RST4, in an image without restart intervals
  EXPECT_EQ(structure_problem(bad.data(), bad.size()), "");
  test::expect_error([&] { decode_checked(bad, "bad.jpg"); }, {"bad.jpg", "corrupt JPEG"});
}

// Only the formats the engine names reach OpenCV: bytes with a DICOM signature (GDCM aborted
// the process on this one, found by fuzz_image) or a "P5" that is no PNM header are refused.
TEST(InputFormats, OnlyTheEnginesFormatsReachOpenCv) {
  std::string dicom(132, '0');
  dicom.replace(0, 3, "P50");
  dicom.replace(128, 4, "DICM");
  const std::vector<unsigned char> bytes(dicom.begin(), dicom.end());
  EXPECT_NE(structure_problem(bytes.data(), bytes.size()).find("not a supported image format"),
            std::string::npos);
  test::expect_error([&] { decode_checked(bytes, "scan.dcm"); },
                     {"scan.dcm", "not a supported image format"});
  const std::string pgm = "P5\n2 1\n255\n\x10\x20";
  const std::vector<unsigned char> ok(pgm.begin(), pgm.end());
  EXPECT_EQ(structure_problem(ok.data(), ok.size()), "");
  EXPECT_EQ(decode_checked(ok, "tiny.pgm").width, 2);
}

TEST_F(Inputs, PixelLimitIsReadFromTheHeaderBeforeDecoding) {
  const std::vector<unsigned char> jpeg = synthetic_jpeg(120, 100, 7);
  const std::optional<ImageSize> s = image_header_size(jpeg.data(), jpeg.size());
  ASSERT_TRUE(s);
  EXPECT_EQ(s->width, 100);
  EXPECT_EQ(s->height, 120);
  EXPECT_NO_THROW(decode_checked(jpeg, "small.jpg", 12000));
  test::expect_error([&] { decode_checked(jpeg, "small.jpg", 11999); },
                     {"small.jpg", "100x120", "11999", "--max-pixels"});
  // A PNG header claiming 100000 x 100000 pixels, and nothing after it: refused by the limit,
  // not by an allocation of 30 GB.
  std::vector<unsigned char> png = {0x89, 'P',  'N', 'G', '\r', '\n', 0x1a, '\n', 0,    0, 0,
                                    13,   'I',  'H', 'D', 'R',  0,    1,    0x86, 0xa0, 0, 1,
                                    0x86, 0xa0, 8,   2,   0,    0,    0,    0,    0,    0, 0};
  test::expect_error([&] { decode_checked(png, "huge.png"); }, {"huge.png", "100000x100000"});
  // A real JPEG whose frame header is rewritten to 60000 x 60000.
  std::vector<unsigned char> big = jpeg;
  for (size_t i = 2; i + 9 < big.size(); ++i)
    if (big[i] == 0xFF && big[i + 1] == 0xC0) {
      big[i + 5] = big[i + 7] = 0xEA;
      big[i + 6] = big[i + 8] = 0x60;
      break;
    }
  test::expect_error([&] { decode_checked(big, "big.jpg"); }, {"big.jpg", "60000x60000"});
  // BMP (BITMAPINFOHEADER, bottom-up and top-down) sizes.
  std::vector<unsigned char> bmp(54, 0);
  bmp[0] = 'B', bmp[1] = 'M', bmp[14] = 40, bmp[18] = 0x10, bmp[22] = 0xF0, bmp[23] = 0xFF;
  bmp[24] = bmp[25] = 0xFF;
  const std::optional<ImageSize> b = image_header_size(bmp.data(), bmp.size());
  ASSERT_TRUE(b);
  EXPECT_EQ(b->width, 16);
  EXPECT_EQ(b->height, 16);
  // TIFF: libtiff takes the first of duplicated width/height tags, and so must the check (the
  // last one, 1 pixel wide, used to pass a 30000x30000 image); a zero extent is no size.
  auto tiff = [](std::vector<std::pair<uint16_t, uint32_t>> tags) {
    std::vector<unsigned char> t = {'I', 'I', 42, 0, 8, 0, 0, 0};
    t.push_back(static_cast<unsigned char>(tags.size()));
    t.push_back(0);
    for (auto [tag, value] : tags) {
      const unsigned char e[12] = {static_cast<unsigned char>(tag),
                                   static_cast<unsigned char>(tag >> 8),
                                   4,
                                   0,
                                   1,
                                   0,
                                   0,
                                   0,
                                   static_cast<unsigned char>(value),
                                   static_cast<unsigned char>(value >> 8),
                                   static_cast<unsigned char>(value >> 16),
                                   static_cast<unsigned char>(value >> 24)};
      t.insert(t.end(), e, e + 12);
    }
    return t;
  };
  const auto dup = tiff({{256, 30000}, {257, 30000}, {256, 1}});
  const std::optional<ImageSize> d = image_header_size(dup.data(), dup.size());
  ASSERT_TRUE(d);
  EXPECT_EQ(d->width, 30000);
  EXPECT_EQ(d->height, 30000);
  const auto zero = tiff({{256, 30000}, {257, 0}});
  EXPECT_FALSE(image_header_size(zero.data(), zero.size()));
  // PNM: a width past 32 bits saturates (over any limit) and the height is still read; it used
  // to return 2^40 with a height of 0, i.e. no size at all (found by fuzz_serve_inputs).
  const std::string pnm = "P6\n# c\n123456789012345 7\n255\n";
  const std::optional<ImageSize> p =
      image_header_size(reinterpret_cast<const unsigned char*>(pnm.data()), pnm.size());
  ASSERT_TRUE(p);
  EXPECT_EQ(p->width, int64_t{0xFFFFFFFF});
  EXPECT_EQ(p->height, 7);
  // Any one byte ends a number, as in OpenCV's reader, and a comment also ends at '\r': this
  // header is 88888 x 8888 to OpenCV (2.4 GB decoded; found by fuzz_image), not "no size".
  for (const std::string& h : {std::string("P4\n#6\n88888\0"
                                           "8888\xb8"
                                           "88",
                                           19),
                               std::string("P5 #c\r88888x8888\n255\n")}) {
    const std::optional<ImageSize> q =
        image_header_size(reinterpret_cast<const unsigned char*>(h.data()), h.size());
    ASSERT_TRUE(q) << h;
    EXPECT_EQ(q->width, 88888);
    EXPECT_EQ(q->height, 8888);
  }
}

// ---- file names in the outputs ---------------------------------------------------------------

TEST(DumpJson, AnyBytesSurviveAsSurrogateEscapes) {
  EXPECT_EQ(cli::dump_json({{"image", "caf\xc3\xa9.jpg"}}), R"({"image":"café.jpg"})");
  EXPECT_EQ(cli::dump_json({{"image", "caf\xe9.jpg"}, {"n", 1}}),
            R"({"image":"caf\udce9.jpg","n":1})");
  EXPECT_EQ(cli::dump_json(std::string("a\nb\"\\\x01\xff\xc3")), R"("a\nb\"\\\u0001\udcff\udcc3")");
  EXPECT_EQ(cli::dump_json(std::string("\xed\xa0\x80")), R"("\udced\udca0\udc80")");  // U+D800
  EXPECT_EQ(cli::dump_json({{"x", {1.5, "\x80"}}}), R"({"x":[1.5,"\udc80"]})");
}

class InputsCli : public Cli {
 protected:
  std::string encode(const std::string& args) { return "encode --model " + model() + " " + args; }
};

TEST_F(InputsCli, EncodeSkipsWhatTheWalkCannotFollowAndEncodesTheRest) {
  const fs::path d = dir_ / "photos";
  make_hostile_tree(d);
  const CliResult r = run(encode(d.string()));
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_EQ(lines_of(r.out).size(), 3u) << r.out;
  for (const char* name : {"broken.jpg", "loop1.jpg", "loop2.jpg"})
    EXPECT_NE(r.err.find(name), std::string::npos) << name << " not named in: " << r.err;
}

TEST_F(InputsCli, TruncatedAndOversizedImagesAreSkippedWithTheReason) {
  const std::vector<unsigned char> whole = bytes_of(lfw_photo());
  write_bytes(dir_ / "cut.jpg", whole, 1024);
  const CliResult r = run(encode(lfw_photo().string() + " " + (dir_ / "cut.jpg").string()));
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_EQ(lines_of(r.out).size(), 1u);
  EXPECT_NE(r.err.find("cut.jpg: not a decodable image (JPEG truncated"), std::string::npos)
      << r.err;
  const CliResult big = run(encode("--max-pixels 60000 " + lfw_photo().string()));
  EXPECT_EQ(big.status, 2) << big.err;
  EXPECT_NE(big.err.find("250x250 pixels is more than the limit of 60000"), std::string::npos)
      << big.err;
}

TEST_F(InputsCli, AnyFileNameSurvivesJsonLinesAndTheNpyPathList) {
  const fs::path d = dir_ / "names";
  fs::create_directories(d);
  const fs::path img = test::shared_path("data/happy-house/images/andrew.jpg");
  for (const char* name : {"caf\xe9.jpg", "new\nline.jpg", "plain.jpg"})
    fs::copy_file(img, d / name);
  const CliResult r = run(encode(d.string()));
  ASSERT_EQ(r.status, 0) << r.err;
  const std::vector<std::string> out = lines_of(r.out);
  ASSERT_EQ(out.size(), 3u) << r.out;  // nothing lost after the odd names
  EXPECT_NE(out[0].find("/caf\\udce9.jpg\""), std::string::npos) << out[0];
  EXPECT_NE(out[1].find("/new\\nline.jpg\""), std::string::npos) << out[1];
  EXPECT_EQ(nlohmann::json::parse(out[1])["image"], (d / "new\nline.jpg").string());
  const CliResult npy =
      run(encode("--format npy -o " + (dir_ / "e.npy").string() + " " + d.string()));
  ASSERT_EQ(npy.status, 0) << npy.err;
  const std::vector<std::string> list = lines_of(test::slurp(dir_ / "e.paths.jsonl"));
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(nlohmann::json::parse(list[1]), (d / "new\nline.jpg").string());
  EXPECT_EQ(nlohmann::json::parse(list[2]), (d / "plain.jpg").string());
  // Python's reading, where it is at hand: os.fsencode(json.loads(...)) gives the bytes back.
  if (std::system("python3 -c '' 2>/dev/null") == 0) {
    const std::string py =
        "python3 -c 'import json,os,sys; "
        "print(all(os.path.exists(os.fsencode(json.loads(l))) for l in open(sys.argv[1])))' '" +
        (dir_ / "e.paths.jsonl").string() + "' > '" + (dir_ / "py.txt").string() + "'";
    ASSERT_EQ(std::system(py.c_str()), 0);
    EXPECT_EQ(test::slurp(dir_ / "py.txt"), "True\n");
  }
}

TEST_F(InputsCli, OptionRangesAreCheckedNamingTheOption) {
  const std::string img = lfw_photo().string();
  for (const auto& [args, option] :
       std::vector<std::pair<std::string, std::string>>{{"--batch 0", "--batch"},
                                                        {"--batch 20000", "--batch"},
                                                        {"--upsample 10", "--upsample"},
                                                        {"--upsample -1", "--upsample"},
                                                        {"--jitter -1", "--jitter"},
                                                        {"--jitter 5000", "--jitter"},
                                                        {"--threads -1", "--threads"},
                                                        {"--max-pixels 0", "--max-pixels"}}) {
    const CliResult r = run(encode(args + " " + img));
    EXPECT_EQ(r.status, 2) << args << ": " << r.err;
    EXPECT_NE(r.err.find(option), std::string::npos) << args << ": " << r.err;
  }
}

#ifdef FACENET_HAS_DLIB
// Each upsampling doubles the image's sides for the detector: refused early, naming the file,
// when the result would pass the pixel limit (it used to run out of memory after a minute).
TEST_F(InputsCli, UpsamplingIsBoundedByThePixelLimit) {
  const CliResult r = run("detect --upsample 2 --max-pixels 500000 " + lfw_photo().string());
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("Juan_Roman_Riquelme_0001.jpg: 250x250 upsampled 2 time(s) for detection "
                       "is 1000000 pixels, more than the limit of 500000"),
            std::string::npos)
      << r.err;
}
#endif

}  // namespace
}  // namespace facenet
