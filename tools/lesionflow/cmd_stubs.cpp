// Subcommands of later stages register here until their modules land.
#include "cli.h"
namespace lf::cli {
void add_caption(CLI::App&, GlobalOptions&, Runner*) {}

}  // namespace lf::cli
