// Running the facenet CLI from tests: exit status, stdout and stderr of one invocation.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "tests/model_fixture.h"

namespace facenet::test {

namespace fs = std::filesystem;

struct CliResult {
  int status = -1;
  std::string out, err;
};

inline std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs the facenet binary with `args` (shell words), its output captured in files in `dir`.
inline CliResult run_cli(const std::string& args, const fs::path& dir) {
  const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string cmd =
      "'" + cli_path() + "' " + args + " >'" + out.string() + "' 2>'" + err.string() + "'";
  const int raw = std::system(cmd.c_str());
  CliResult r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// Runs the facenet binary in a per-test temporary directory and captures its output.
class Cli : public test::TempDirTest {
 protected:
  Cli() : TempDirTest("facenet-cli") {}

  CliResult run(const std::string& args) { return run_cli(args, dir_); }

  std::string model() { return converted_model("openface").string(); }
  std::string happy(const std::string& f) {
    return shared_path("data/happy-house/images/" + f).string();
  }
};

}  // namespace facenet::test
