// `facenet serve`: the subcommand that starts the HTTP face service.
#pragma once

#include <CLI/CLI.hpp>

namespace facenet::cli {

void add_serve_command(CLI::App& app, int& exit_code);

}  // namespace facenet::cli
