// lesionflow classify train|eval: flags -> options structs of pipeline/classify_runs.h -> printed
// summaries.
#include <cmath>
#include <limits>

#include "cli.h"
#include "lesionflow/metrics.h"
#include "pipeline/classify_runs.h"

namespace lf::cli {
namespace {

void print_eval(const std::string& what, const nlohmann::json& t) {
  std::printf(
      "%s: AUC %.3f [%.3f, %.3f]  accuracy %.3f  balanced accuracy %.3f  sensitivity %.3f  "
      "specificity %.3f",
      what.c_str(), t["auc"]["value"].get<double>(), t["auc"]["lo"].get<double>(),
      t["auc"]["hi"].get<double>(), t["accuracy"]["value"].get<double>(),
      t["balanced_accuracy"]["value"].get<double>(), t["sensitivity"]["value"].get<double>(),
      t["specificity"]["value"].get<double>());
  auto value = [&](const char* m) {
    return t.contains(m) && t[m]["value"].is_number() ? t[m]["value"].get<double>() : std::nan("");
  };
  if (t.contains("brier"))
    std::printf("  specificity at sensitivity %.2f: %.3f  Brier %.3f  ECE %.3f", kTriageSensitivity,
                value("specificity_at_sensitivity"), value("brier"), value("ece"));
  if (t.contains("recalibrated") && t["recalibrated"]["ece"].is_number())
    std::printf(" (after the model's Platt scaling: Brier %.3f  ECE %.3f)",
                t["recalibrated"]["brier"].get<double>(), t["recalibrated"]["ece"].get<double>());
  if (t.contains("worst_group"))
    std::printf("  worst group %s=%s %.3f",
                t["worst_group"]["attribute"].get<std::string>().c_str(),
                t["worst_group"]["group"].get<std::string>().c_str(),
                t["worst_group"]["balanced_accuracy"].get<double>());
  std::printf("\n");
  if (t.contains("by_dx") && t["by_dx"]["triage_threshold"].is_number() &&
      t["by_dx"]["rows"].size() > 1) {
    std::printf("  called malignant at sensitivity %.2f (score >= %.3f), per diagnosis:",
                kTriageSensitivity, t["by_dx"]["triage_threshold"].get<double>());
    for (const auto& r : t["by_dx"]["rows"])
      std::printf(" %s %.0f%% (n %lld)", r["dx"].get<std::string>().c_str(),
                  100 * r["called_malignant_at_triage"].get<double>(),
                  static_cast<long long>(r["n"].get<int64_t>()));
    std::printf("\n");
  }
  if (t.contains("dx") && t["dx"]["balanced_accuracy"].is_number()) {
    std::printf("  diagnosis task: accuracy %.3f, balanced accuracy %.3f (%lld images; recall",
                t["dx"]["accuracy"].get<double>(), t["dx"]["balanced_accuracy"].get<double>(),
                static_cast<long long>(t["dx"]["n"].get<int64_t>()));
    for (const auto& [dx, r] : t["dx"]["recall_per_class"].items())
      if (r.is_number()) std::printf(" %s %.2f", dx.c_str(), r.get<double>());
    std::printf(")\n");
  }
}

void print_train(const nlohmann::json& r, const std::string& out) {
  print_eval("test (" + std::to_string(r["test"]["n"].get<int>()) + " images)", r["test"]);
  if (r.contains("test_dx"))
    std::printf("test dx: accuracy %.3f  balanced accuracy %.3f (%d classes)\n",
                r["test_dx"]["accuracy"].get<double>(),
                r["test_dx"]["balanced_accuracy"].get<double>(),
                static_cast<int>(r["test_dx"]["recall_per_class"].size()));
  for (auto& [k, v] : r["extra_tests"].items()) print_eval(k, v);
  std::printf("-> %s/best.safetensors, %s/result.json\n", out.c_str(), out.c_str());
}

}  // namespace

void add_classify(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto* c =
      app.add_subcommand("classify", "train and evaluate skin-lesion classifiers (CNN or ViT)");
  c->require_subcommand(1);
  static ClassifyTrainOptions t;
  auto* tr = c->add_subcommand("train",
                               "train on real and/or synthetic images, evaluate on the test split");
  tr->add_option("--data", t.data, "prepared cache of the real dataset")->required();
  tr->add_option("--splits", t.splits, "splits CSV (train/val/test, lesion-grouped)")->required();
  tr->add_option("--captions", t.captions, "captions.jsonl (skin-tone subgroups)");
  tr->add_option("--synthetic", t.synthetic, "synthetic set directory (manifest.jsonl)");
  tr->add_option("--synthetic-weight", t.synthetic_weight, "loss weight of synthetic images")
      ->capture_default_str()
      ->check(kNonNegative);
  tr->add_option("--arm", t.arm,
                 "real | real+synthetic | real+filtered (without the synthetic images whose "
                 "label --filter-with contradicts) | synthetic-then-real (pretrain on synthetic, "
                 "fine-tune on real) | synthetic")
      ->capture_default_str()
      ->check(CLI::IsMember(classifier_arms()));
  tr->add_option("--filter-with", t.filter_with,
                 "real+filtered: run directory of a real-only classifier (its best.safetensors)");
  tr->add_option("--filter-confidence", t.filter_confidence,
                 "real+filtered: drop a benign synthetic image scored P(malignant) > C, a "
                 "malignant one scored < 1 - C")
      ->capture_default_str()
      ->check(CLI::Range(0.5, 1.0));
  tr->add_option("--real-size", t.real_size, "real training images (-1: all)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{-1}, std::numeric_limits<int64_t>::max()));
  tr->add_option("--arch", t.arch, "cnn | vit")
      ->capture_default_str()
      ->check(CLI::IsMember({"cnn", "vit"}));
  tr->add_option("--classes", t.classes,
                 "binary (benign/malignant) | dx (one output per diagnosis of the training split, "
                 "synthetic images by their manifest dx; epochs picked on the validation balanced "
                 "accuracy; also the reference feature network)")
      ->capture_default_str()
      ->check(CLI::IsMember({"binary", "dx"}));
  tr->add_option("--width", t.width, "CNN width")->capture_default_str()->check(kPositive);
  tr->add_option("--epochs", t.epochs, "epochs")->capture_default_str()->check(kPositive);
  tr->add_option("--batch", t.batch, "batch size")->capture_default_str()->check(kPositive);
  tr->add_option("--lr", t.lr, "peak learning rate")->capture_default_str()->check(kPositive);
  tr->add_option("--patience", t.patience, "early-stopping patience (epochs)")
      ->capture_default_str()
      ->check(kPositive);
  tr->add_option("--colour-constancy", t.colour_constancy,
                 "none | shades-of-gray (Shades-of-Gray, p = 6, on every input image; saved with "
                 "the model so eval does the same)")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "shades-of-gray"}));
  tr->add_option("--shift-augment", t.shift_augment,
                 "chance per training image of an acquisition shift (zoom, squash, colour cast, "
                 "vignette, ruler, pen, hair, blur/JPEG; see 'data shift')")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  tr->add_option("--max-minutes", t.max_minutes, "time budget")
      ->capture_default_str()
      ->check(kNonNegative);
  tr->add_option("--test-dataset", t.test_datasets,
                 "extra test datasets (evaluated, never trained on)");
  tr->add_flag("--resume", t.resume, "continue an interrupted run");
  tr->add_option("--out", t.out, "run directory")->required();
  bind(tr, t, g, run, run_classify_train, [](const nlohmann::json& r) { print_train(r, t.out); });

  static ClassifyEvalOptions e;
  auto* ev = c->add_subcommand("eval", "evaluate a trained classifier");
  ev->add_option("--model", e.model, "best.safetensors")->required();
  ev->add_option("--data", e.data, "prepared cache (its --split is evaluated)");
  ev->add_option("--split", e.split, "which split of --data: test | val | train")
      ->capture_default_str()
      ->check(CLI::IsMember({"test", "val", "train"}));
  ev->add_option("--splits", e.splits, "splits CSV");
  ev->add_option("--captions", e.captions, "captions.jsonl (skin-tone subgroups)");
  ev->add_option("--test-dataset", e.test_datasets, "extra test datasets");
  ev->add_option("--out", e.out, "metrics JSON");
  ev->add_option("--scores", e.scores,
                 "per-image CSV of every evaluated set: set,id,label,score (P(malignant)) and "
                 "p_calibrated when the model has a Platt scaling");
  bind(ev, e, g, run, run_classify_eval, [](const nlohmann::json& r) {
    for (auto& [k, v] : r.items()) print_eval(k, v);
  });

  static ClassifyCalibrateOptions cal;
  auto* ca = c->add_subcommand(
      "calibrate",
      "refit the Platt scaling of a classifier on your own labelled images (e.g. another camera)");
  ca->add_option("--model", cal.model, "best.safetensors")->required();
  ca->add_option("--dataset", cal.dataset,
                 "labelled images: isic:CSV:DIR, folder:PATH, ham10000:DIR, phantom:N")
      ->required();
  ca->add_option("--out", cal.out, "the recalibrated model (may be --model itself)")->required();
  bind(ca, cal, g, run, run_classify_calibrate, [](const nlohmann::json& r) {
    std::printf(
        "%s: %d images (%d malignant); Platt a %.3f b %.3f; on these images Brier %.3f -> %.3f, "
        "ECE %.3f -> %.3f (in-sample) -> %s\n",
        r["dataset"].get<std::string>().c_str(), r["n"].get<int>(), r["positives"].get<int>(),
        r["platt"]["a"].get<double>(), r["platt"]["b"].get<double>(),
        r["before"]["brier"].get<double>(), r["after"]["brier"].get<double>(),
        r["before"]["ece"].get<double>(), r["after"]["ece"].get<double>(),
        r["out"].get<std::string>().c_str());
  });
}

}  // namespace lf::cli
