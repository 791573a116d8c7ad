// lesionflow caption (dataset -> captions.jsonl) and lesionflow concepts measure (a folder of
// images): flags -> src/concepts/caption_dataset.cpp.
#include "cli.h"
#include "lesionflow/captions.h"

namespace lf::cli {

void add_caption(CLI::App& app, GlobalOptions& g, Runner* run) {
  static CaptionRunOptions o;
  auto* c = app.add_subcommand("caption",
                               "measure ABC(D) concepts and write concept-rich captions.jsonl");
  c->add_option("--dataset", o.dataset, "dataset spec (see data --help)")->capture_default_str();
  c->add_option("--malignant", o.malignant, "dx codes counted as malignant");
  c->add_option("--out", o.out, "captions JSONL")->capture_default_str();
  c->add_option("--mask", o.mask, "given (use dataset masks when present) | auto (always segment)")
      ->capture_default_str()
      ->check(CLI::IsMember({"given", "auto"}));
  c->add_option("--template", o.template_file,
                "caption template file with {dx} {site} {colours} ... placeholders");
  c->add_option("--limit", o.limit, "only the first N images")->check(kNonNegative);
  c->add_option("--px-per-mm", o.px_per_mm, "image scale for diameters in mm")->check(kNonNegative);
  c->add_option("--llm-url", o.llm_url,
                "OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1 (optional rewrite)");
  c->add_option("--llm-model", o.llm_model, "model name sent to the server")->capture_default_str();
  c->add_option("--llm-timeout", o.llm_timeout, "seconds per request before falling back")
      ->capture_default_str()
      ->check(kNonNegative);
  bind(c, o, g, run, caption_dataset, [](const nlohmann::json& s) {
    std::printf("captioned %lld images (%lld errors, %lld warnings) -> %s; summary %s\n",
                (long long)s["images"].get<int64_t>(), (long long)s["errors"].get<int64_t>(),
                (long long)s["warnings"].get<int64_t>(), o.out.c_str(),
                s["summary"].get<std::string>().c_str());
    if (s.contains("auto_segmentation_dice"))
      std::printf("auto-segmentation Dice vs given masks: mean %.3f\n",
                  s["auto_segmentation_dice"]["mean"].get<double>());
    if (s.contains("tds_auc_mel_vs_nv"))
      std::printf("TDS AUC melanoma vs nevus: %.3f\n", s["tds_auc_mel_vs_nv"].get<double>());
  });

  static std::string images, out;
  static bool recursive = false;
  auto* cc = app.add_subcommand("concepts", "concept tools");
  cc->require_subcommand(1);
  auto* m =
      cc->add_subcommand("measure", "measure generated images the same way (concept adherence)");
  m->add_option("--images", images,
                "folder of images (every format OpenCV reads: PNG, JPEG, BMP, TIFF, WebP, ...)")
      ->required();
  m->add_option("--out", out, "output JSONL (default IMAGES/concepts.jsonl)");
  m->add_flag("--recursive", recursive, "also the images in subfolders");
  m->callback([&g, run]() {
    *run = [&g]() -> Status {
      LF_ASSIGN_OR_RETURN(nlohmann::json j,
                          measure_image_folder(images, out, g.threads, recursive));
      if (g.json)
        emit_json(g, j);
      else
        std::printf("measured %lld images (%lld skipped) -> %s\n",
                    (long long)j["measured"].get<int64_t>(), (long long)j["skipped"].get<int64_t>(),
                    j["out"].get<std::string>().c_str());
      return Status::ok_status();
    };
  });
}

}  // namespace lf::cli
