// lesionflow export: weights for shipping (fp16/bf16), a latent generator with its autoencoder.
#include "cli.h"
#include "lesionflow/io.h"
#include "pipeline/export.h"

namespace lf::cli {
namespace {
struct ExportOptions {
  std::string checkpoint, out, dtype = "fp16", kind = "generator", ae;
};

Status run_export(const ExportOptions& o, const GlobalOptions& g) {
  if (o.kind == "generator")
    LF_RETURN_IF_ERROR(export_generator(o.checkpoint, o.out, o.dtype, o.ae));
  else
    LF_RETURN_IF_ERROR(convert_safetensors(o.checkpoint, o.out, o.dtype));
  LF_ASSIGN_OR_RETURN(std::string bytes, read_file(o.out));
  emit_json(g, {{"out", o.out}, {"bytes", bytes.size()}, {"dtype", o.dtype}});
  if (!g.json)
    std::printf("exported %s (%s, %.1f MB) -> %s\n", o.checkpoint.c_str(), o.dtype.c_str(),
                bytes.size() / 1e6, o.out.c_str());
  return Status::ok_status();
}
}  // namespace

void add_export(CLI::App& app, GlobalOptions& g, Runner* run) {
  static ExportOptions o;
  auto* e = app.add_subcommand(
      "export",
      "convert weights for shipping (fp16/bf16); a latent generator with its autoencoder");
  e->add_option("--checkpoint", o.checkpoint, "generator or classifier .safetensors")->required();
  e->add_option("--out", o.out,
                "output .safetensors (a latent generator's autoencoder goes beside it as "
                "<stem>_ae.safetensors)")
      ->required();
  e->add_option("--dtype", o.dtype, "fp16 | bf16 | fp32")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp16", "bf16", "fp32"}));
  e->add_option("--kind", o.kind,
                "generator | other (any safetensors: tensors converted, metadata kept)")
      ->capture_default_str()
      ->check(CLI::IsMember({"generator", "other"}));
  e->add_option("--ae", o.ae,
                "autoencoder of a latent generator (default: the one its checkpoint names)");
  e->callback([&g, run]() { *run = [&g]() { return run_export(o, g); }; });
}

}  // namespace lf::cli
