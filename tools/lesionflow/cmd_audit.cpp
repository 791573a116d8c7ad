// lesionflow audit: a synthetic set measured in the fixed reference feature space (HAM-FD).
#include "cli.h"
#include "lesionflow/io.h"
#include "pipeline/audit_run.h"

namespace lf::cli {
namespace {
struct AuditOptions {
  AuditRunOptions run;
  std::string out;
};

Status run_audit_cmd(const AuditOptions& o, const GlobalOptions& g) {
  LF_ASSIGN_OR_RETURN(nlohmann::json a, audit_synthetic_set(o.run));
  if (!o.out.empty()) LF_RETURN_IF_ERROR(write_file_atomic(o.out, a.dump(2) + "\n"));
  if (g.json) {
    emit_json(g, a);
    return Status::ok_status();
  }
  auto& fd = a["fd"];
  std::printf(
      "HAM-FD %.2f [%.2f, %.2f]  (real floor, train vs test: %.2f [%.2f, %.2f])\n",
      fd["synthetic_vs_real_test"].get<double>(), fd["synthetic_vs_real_test_ci"][0].get<double>(),
      fd["synthetic_vs_real_test_ci"][1].get<double>(), fd["real_train_vs_real_test"].get<double>(),
      fd["real_train_vs_real_test_ci"][0].get<double>(),
      fd["real_train_vs_real_test_ci"][1].get<double>());
  if (fd["mix_matched"].is_object() && fd["mix_matched"].contains("synthetic_vs_real_test"))
    std::printf("HAM-FD with the real images weighted to the synthetic dx mix %.2f (floor %.2f)\n",
                fd["mix_matched"]["synthetic_vs_real_test"].get<double>(),
                fd["mix_matched"]["real_train_vs_real_test"].get<double>());
  if (fd["draws"].is_object())
    std::printf(
        "HAM-FD over %d disjoint draws of %d: %.2f +- %.2f (floor %.2f +- %.2f), ratio %.2f\n",
        fd["draws"]["draws"].get<int>(), fd["draws"]["size"].get<int>(),
        fd["draws"]["synthetic_mean"].get<double>(), fd["draws"]["synthetic_sd"].get<double>(),
        fd["draws"]["floor_mean"].get<double>(), fd["draws"]["floor_sd"].get<double>(),
        fd["draws"]["ratio"].get<double>());
  auto& pr = a["precision_recall"];
  auto& dc = a["density_coverage"];
  std::printf("precision %.3f recall %.3f (real train: %.3f / %.3f)  density %.3f coverage %.3f\n",
              pr["precision"].get<double>(), pr["recall"].get<double>(),
              pr["real_train_precision"].get<double>(), pr["real_train_recall"].get<double>(),
              dc["density"].get<double>(), dc["coverage"].get<double>());
  auto& cas = a["cas"];
  auto& ca = a["concept_adherence"]["synthetic_vs_prompt"];
  std::printf(
      "CAS AUC %.3f  asked-colour presence %.3f  colour F1 %.3f  asymmetry exact %.3f (n %d)\n",
      cas["auc"].get<double>(), ca["asked_colour_presence"].get<double>(),
      ca["colour_f1"].get<double>(), ca["asymmetry_exact"].get<double>(), ca["n"].get<int>());
  if (a.contains("diversity") && a["diversity"]["synthetic_same_dx"].is_number())
    std::printf(
        "diversity (mean MS-SSIM of same-dx pairs, lower = more varied): synthetic %.3f, "
        "real train %.3f\n",
        a["diversity"]["synthetic_same_dx"].get<double>(),
        a["diversity"]["real_train_same_dx"].get<double>());
  if (!o.out.empty()) std::printf("-> %s\n", o.out.c_str());
  return Status::ok_status();
}
}  // namespace

void add_audit(CLI::App& app, GlobalOptions& g, Runner* run) {
  static AuditOptions o;
  auto* a = app.add_subcommand(
      "audit",
      "fidelity, diversity, CAS, memorisation and concept adherence of a synthetic set "
      "in the fixed reference feature space (HAM-FD)");
  a->add_option("--synthetic", o.run.synthetic, "directory written by 'lesionflow synth'")
      ->required();
  a->add_option("--data", o.run.data, "prepared cache of the real set")->required();
  a->add_option("--splits", o.run.splits, "splits CSV (train/val/test)")->required();
  a->add_option("--captions", o.run.captions,
                "captions.jsonl of the real set (concept adherence reference)");
  a->add_option("--features", o.run.features,
                std::string("feature network (default: models/") + kReferenceNetworkFile + ")");
  a->add_option("--bootstrap", o.run.bootstrap, "FD interval resamples")
      ->capture_default_str()
      ->check(CLI::Range(0, 10000));
  a->add_option("--draw-size", o.run.draw_size,
                "also FD over disjoint draws of this many synthetic images, each with a floor of "
                "as many real training images (reported when the set holds 2 draws; 0 = off)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  a->add_option("--out", o.out, "write the audit JSON here");
  a->callback([&g, run]() { *run = [&g]() { return run_audit_cmd(o, g); }; });
}

}  // namespace lf::cli
